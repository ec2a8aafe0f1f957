"""The admin pages: accounts, letters, establishments, the register and the audit trail.

Accounts, letters and the audit trail are read-only: they change only
through the service, so that every change keeps the rules, writes its
event and its audit record.  Establishments can be added and renamed,
with the staff allowed to split for them.  The split, and the re-issue of
a lost letter, are actions on the accounts, offered to users with the
``account_merge.split_account`` permission and carried out only for the establishments the project's
rule allows them (``ACCOUNT_MERGE["SPLIT_AUTHORIZATION"]``); its result
page prints the new letters (a split makes one new account per letter
the moved children came with), whose provisional passwords are shown
this once and never stored.  The school's register (its entries, and the
accounts it closed) is shown read-only too: it changes by a sync
(``manage.py account_merge_sync``).  The same users may download, for a parent
who asks the school, everything the library holds about an account
(the export action).
"""

from __future__ import annotations

import json
from typing import Any

import attrs
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django.utils.translation import get_language, gettext
from django.utils.translation import gettext_lazy as _

from account_merge.contrib.django import models as m
from account_merge.contrib.django.permissions import SPLIT_PERMISSION, is_allowed_to_split
from account_merge.contrib.django.service import get_service
from account_merge.domain.account import Account
from account_merge.domain.establishment import Establishment
from account_merge.domain.receipts import SplitReceipt
from account_merge.exceptions import AccountMergeError
from account_merge.messages import error_message

__all__ = ["AccountAdmin", "AuditEntryAdmin", "EstablishmentAdmin", "LetterAdmin",
           "RegisterEntryAdmin"]


@attrs.frozen
class SplitPlan:
    """What the split of one selected account will do, shown before it is confirmed."""

    account: m.Account
    live: Account
    allowed: list[str]
    leaving: list[m.ChildLink]
    staying: list[m.ChildLink]


class ReadOnlyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Viewing only: the service is the only writer of these rows."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ChildLinkInline(admin.TabularInline):  # type: ignore[type-arg]
    model = m.ChildLink
    fields = readonly_fields = ("first_name", "last_name", "child", "establishment_uai",
                                "via_merge", "origin_account_id", "linked_at")
    extra = 0
    can_delete = False
    ordering = ["id"]
    verbose_name = _("enfant rattaché")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def _listed(children: list[list[str]]) -> str:
    """The children a register entry lists, by name; a dash when it lists none any more."""
    return ", ".join(f"{c[1]} {c[2]}" for c in children) or gettext(
        "— (ne figure plus au registre)")


class RegisterEntryInline(admin.TabularInline):  # type: ignore[type-arg]
    """The register's entries whose letter is this account."""

    model = m.RegisterEntry
    fields = readonly_fields = ("establishment_uai", "external_id", "display_name",
                                "listed_children")
    extra = 0
    can_delete = False
    verbose_name = _("entrée du registre")
    verbose_name_plural = _("entrées du registre")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description=_("enfants listés"))
    def listed_children(self, entry: m.RegisterEntry) -> str:
        return _listed(entry.children)


@admin.register(m.Account)
class AccountAdmin(ReadOnlyAdmin):
    list_display = ["login", "display_name", "status", "role", "establishment_uai",
                    "merged_into", "created_at"]
    list_filter = ["status", "role", "establishment_uai"]
    search_fields = ["login", "display_name", "id", "email"]
    ordering = ["login"]
    fields = readonly_fields = ("id", "login", "display_name", "role", "status",
                                "establishment_uai", "email", "created_at", "merged_into",
                                "closed_at")
    inlines = [ChildLinkInline, RegisterEntryInline]

    @admin.display(description=_("fermé le"))
    def closed_at(self, account: m.Account) -> Any:
        closure = m.RegisterClosure.objects.filter(account_id=account.id).first()
        return closure.closed_at if closure is not None else None

    actions = ["split_merge", "reissue_letter", "export_personal_data"]

    def has_split_permission(self, request: HttpRequest) -> bool:
        """Whether the split action is offered at all (the permission)."""
        return bool(request.user.has_perm(SPLIT_PERMISSION))

    @admin.action(permissions=["split"],
                  description=_("Casser le regroupement (pour mes établissements)"))
    def split_merge(self, request: HttpRequest,
                    queryset: QuerySet[m.Account]) -> HttpResponse | None:
        """Split each selected account for every establishment the user may split for.

        A first page shows, for each account, the children that will leave
        it and which stay; nothing changes until it is confirmed.  The page
        that follows prints the new letters; it is never cached.
        """
        service = get_service()
        plans: list[SplitPlan] = []
        for account in queryset:
            live = service.resolve(account.id)
            links = list(m.ChildLink.objects.filter(account_id=live.id).order_by("id"))
            uais = sorted({link.establishment_uai for link in links if link.via_merge})
            allowed = [uai for uai in uais if is_allowed_to_split(request.user, uai)]
            if not allowed:
                self.message_user(request, gettext(
                    "%(login)s : aucun enfant d'un de vos établissements n'a rejoint ce compte "
                    "par un regroupement.") % {"login": account.login}, messages.WARNING)
                continue
            leaving = [link for link in links
                       if link.via_merge and link.establishment_uai in allowed]
            plans.append(SplitPlan(account=account, live=live, allowed=allowed,
                                   leaving=leaving,
                                   staying=[link for link in links if link not in leaving]))
        if not plans:
            return None
        if request.POST.get("confirm") != "yes":
            response = TemplateResponse(request, "account_merge/admin/split_confirm.html", {
                **self.admin_site.each_context(request),
                "title": gettext("Casser le regroupement : confirmation"),
                "opts": self.model._meta,
                "plans": plans,
                "selected": [str(plan.account.pk) for plan in plans],
                "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            })
            add_never_cache_headers(response)
            return response
        done: list[SplitReceipt] = []
        for plan in plans:
            account, live = plan.account, plan.live
            for uai in plan.allowed:
                establishment = m.Establishment.objects.filter(uai=uai).first()
                name = establishment.name if establishment is not None else uai
                try:
                    done.append(service.split(Establishment(uai, name), live.id))
                except AccountMergeError as error:
                    self.message_user(request, gettext("%(login)s (%(uai)s) : %(message)s") % {
                        "login": account.login, "uai": uai,
                        "message": error_message(error, get_language())}, messages.ERROR)
        if not done:
            return None
        response = TemplateResponse(request, "account_merge/admin/split_letters.html", {
            **self.admin_site.each_context(request),
            "title": gettext("Nouveaux courriers de notification"),
            "opts": self.model._meta,
            # A split makes one account, so one letter, per letter the children came with.
            "letters": [{"login": letter.login, "children": letter.children,
                         "text": letter.render()}
                        for receipt in done for letter in receipt.letters],
        })
        add_never_cache_headers(response)
        return response

    @admin.action(permissions=["split"],
                  description=_("Rééditer le courrier (pour mes établissements)"))
    def reissue_letter(self, request: HttpRequest,
                       queryset: QuerySet[m.Account]) -> HttpResponse | None:
        """A new letter, with the same login, for each selected account (a lost letter).

        Done by the first establishment the user may act for whose letter
        carried a child now on the account; the old password stops working.
        The page that follows prints the letters; it is never cached.
        """
        service = get_service()
        letters = []
        for account in queryset:
            uais = sorted(set(m.ChildLink.objects.filter(account_id=account.id)
                              .values_list("origin_establishment_uai", flat=True)))
            allowed = [uai for uai in uais if is_allowed_to_split(request.user, uai)]
            if not allowed:
                self.message_user(request, gettext(
                    "%(login)s : aucun enfant d'un de vos établissements n'est rattaché à ce "
                    "compte.") % {"login": account.login}, messages.WARNING)
                continue
            establishment = m.Establishment.objects.filter(uai=allowed[0]).first()
            name = establishment.name if establishment is not None else allowed[0]
            try:
                letters.append(service.reissue_letter(Establishment(allowed[0], name),
                                                      account.id))
            except AccountMergeError as error:
                self.message_user(request, gettext("%(login)s (%(uai)s) : %(message)s") % {
                    "login": account.login, "uai": allowed[0],
                    "message": error_message(error, get_language())}, messages.ERROR)
        if not letters:
            return None
        response = TemplateResponse(request, "account_merge/admin/split_letters.html", {
            **self.admin_site.each_context(request),
            "title": gettext("Courriers réédités"),
            "intro": gettext("Même identifiant, nouveau mot de passe provisoire : l'ancien ne "
                             "fonctionne plus. Imprimez chaque courrier maintenant, le mot de "
                             "passe provisoire n'est affiché qu'une fois."),
            "opts": self.model._meta,
            "letters": [{"login": letter.login, "children": letter.children,
                         "text": letter.render()} for letter in letters],
        })
        add_never_cache_headers(response)
        return response


    @admin.action(permissions=["split"],
                  description=_("Exporter les données du compte (droit d'accès)"))
    def export_personal_data(self, request: HttpRequest,
                             queryset: QuerySet[m.Account]) -> HttpResponse | None:
        """Everything the library holds about one selected account, as a JSON file.

        For a parent exercising the right of access (RGPD art. 15) at the
        school: offered for an account whose letter, or a letter of one of
        its children, one of the user's establishments issued.  Never cached.
        """
        accounts = list(queryset[:2])
        if len(accounts) != 1:
            self.message_user(request, gettext("Choisissez un seul compte à exporter."),
                              messages.WARNING)
            return None
        account = accounts[0]
        uais = {account.establishment_uai, *m.ChildLink.objects.filter(
            account_id=account.id).values_list("origin_establishment_uai", flat=True)}
        if not any(is_allowed_to_split(request.user, uai) for uai in sorted(uais)):
            self.message_user(request, gettext(
                "%(login)s : ce compte ne relève d'aucun de vos établissements.") % {
                "login": account.login}, messages.WARNING)
            return None
        data = get_service().export_personal_data(account.id)
        response = HttpResponse(json.dumps(data, ensure_ascii=False, indent=2),
                                content_type="application/json; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{account.login}.json"'
        add_never_cache_headers(response)
        return response


@admin.register(m.Letter)
class LetterAdmin(ReadOnlyAdmin):
    """The letters issued: to whom, when, until when, and whether they were used."""

    list_display = ["login", "display_name", "establishment_uai", "created_at", "expires_at",
                    "letter_state"]
    list_filter = ["establishment_uai", "status"]
    search_fields = ["login", "display_name"]
    date_hierarchy = "created_at"
    fields = readonly_fields = ("login", "display_name", "establishment_uai", "created_at",
                                "expires_at", "letter_state", "children")

    def get_queryset(self, request: HttpRequest) -> QuerySet[m.Letter]:
        return super().get_queryset(request).select_related("credential")

    @admin.display(description=_("valable jusqu'au"))
    def expires_at(self, letter: m.Letter) -> Any:
        credential = getattr(letter, "credential", None)
        if credential is None or credential.kind != "provisional":
            return None
        return credential.expires_at

    @admin.display(description=_("courrier"))
    def letter_state(self, letter: m.Letter) -> str:
        if letter.status == "merged":
            return gettext("utilisé (compte regroupé)")
        if letter.status == "active":
            return gettext("utilisé (compte activé)")
        if letter.status == "closed":
            return gettext("compte fermé (plus aucun enfant)")
        expires = self.expires_at(letter)
        if expires is not None and expires <= timezone.now():
            return gettext("expiré")
        return gettext("en attente d'activation")

    @admin.display(description=_("enfants"))
    def children(self, letter: m.Letter) -> str:
        # The children the letter named, wherever they are attached now.
        links = m.ChildLink.objects.filter(origin_account_id=letter.id).order_by("id")
        names = dict.fromkeys(str(link) for link in links)
        return ", ".join(names) or "—"


class EstablishmentStaffInline(admin.TabularInline):  # type: ignore[type-arg]
    model = m.EstablishmentStaff
    extra = 1
    verbose_name = _("personnel autorisé à casser les regroupements")
    verbose_name_plural = _("personnels autorisés à casser les regroupements")


@admin.register(m.Establishment)
class EstablishmentAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["uai", "name"]
    search_fields = ["uai", "name"]
    ordering = ["uai"]
    inlines = [EstablishmentStaffInline]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        # The UAI identifies the establishment in every account and link.
        return ["uai"] if obj is not None else []

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(m.AuditEntry)
class AuditEntryAdmin(ReadOnlyAdmin):
    list_display = ["at", "action", "outcome", "actor", "account_id", "login"]
    list_filter = ["action", "outcome"]
    search_fields = ["account_id", "actor", "login"]
    date_hierarchy = "at"
    ordering = ["-id"]
    fields = readonly_fields = ("at", "action", "outcome", "actor", "account_id", "login",
                                "detail")


@admin.register(m.RegisterEntry)
class RegisterEntryAdmin(ReadOnlyAdmin):
    """The school's register as last synced: each responsable, their account, their children."""

    list_display = ["establishment_uai", "external_id", "display_name", "account",
                    "listed_children"]
    list_filter = ["establishment_uai"]
    search_fields = ["external_id", "display_name", "account__login"]
    ordering = ["establishment_uai", "external_id"]
    fields = readonly_fields = ("establishment_uai", "external_id", "display_name", "email",
                                "account", "listed_children")

    @admin.display(description=_("enfants listés"))
    def listed_children(self, entry: m.RegisterEntry) -> str:
        return _listed(entry.children)
