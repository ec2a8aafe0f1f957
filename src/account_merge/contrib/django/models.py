"""The tables of the store, as Django models.

They mirror the tables of :mod:`account_merge.storage.sqlite` and hold
rows, not domain objects: :mod:`account_merge.contrib.django.storage`
translates between the two, and the service is the only writer.  The
admin shows them read-only, except the establishments and the staff
allowed to split for them.  No password is ever stored, only argon2 (or
Django) hashes, and the admin never shows those.

Times are stored as UTC (naive UTC when the project has ``USE_TZ =
False``); the domain gets them back as aware UTC datetimes.

Over 500 lines because Django wants an app's models in one ``models``
module; each model is short.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.db.models.functions import Lower
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from account_merge.domain.account import AccountStatus, CredentialKind, Role
from account_merge.domain.audit import AuditAction
from account_merge.domain.notices import NoticeStatus
from account_merge.domain.validation import MAX_EMAIL_LENGTH, MAX_ID_LENGTH, MAX_NAME_LENGTH

if TYPE_CHECKING:
    from django_stubs_ext import StrOrPromise

__all__ = [
    "Account",
    "AuditEntry",
    "Child",
    "ChildLink",
    "Credential",
    "EmailIndexEntry",
    "Establishment",
    "EstablishmentStaff",
    "Letter",
    "Notice",
    "NoticeCursor",
    "OutboxEvent",
    "OutboxHead",
    "Receipt",
    "RegisterClosure",
    "RegisterEntry",
    "Throttle",
    "UserLink",
]

#: Longest login, login key and throttle key stored.
_KEY_LENGTH = 255
_UAI_LENGTH = 8


def _choices(enum: type[AccountStatus] | type[Role] | type[CredentialKind] | type[AuditAction]
             | type[NoticeStatus],
             labels: dict[str, StrOrPromise]) -> list[tuple[str, StrOrPromise]]:
    return [(member.value, labels.get(member.value, member.value)) for member in enum]


STATUS_CHOICES = _choices(AccountStatus, {"provisional": _("provisoire"), "active": _("actif"),
                                          "merged": _("regroupé"), "closed": _("fermé")})
ROLE_CHOICES = _choices(Role, {"responsable": _("responsable"), "eleve": _("élève")})
KIND_CHOICES = _choices(CredentialKind, {"provisional": _("mot de passe provisoire"),
                                         "password": _("mot de passe")})
ACTION_CHOICES = _choices(AuditAction, {
    "register_establishment": _("enregistrement d'établissement"), "issue": _("émission"),
    "activate": _("activation"), "authenticate": _("connexion"),
    "change_password": _("changement de mot de passe"),
    "change_email": _("changement d'e-mail"), "merge": _("regroupement"),
    "split": _("séparation"),
    # the way back
    "request_password_reset": _("demande de réinitialisation"),
    "reset_password": _("réinitialisation du mot de passe"),
    "request_login_reminder": _("demande de rappel d'identifiant"),
    "request_email_change": _("demande de changement d'e-mail"),
    "confirm_email": _("confirmation d'e-mail"),
    "reissue_letter": _("réédition du courrier"), "notice": _("message"),
    "sync_register": _("synchronisation du registre"),
    # retention
    "purge": _("purge")})


class Establishment(models.Model):
    """An établissement, by its UAI."""

    uai = models.CharField(_("UAI"), max_length=_UAI_LENGTH, primary_key=True)
    name = models.CharField(_("nom"), max_length=MAX_NAME_LENGTH)

    class Meta:
        verbose_name = _("établissement")
        verbose_name_plural = _("établissements")

    def __str__(self) -> str:
        return f"{self.uai} {self.name}"


class EstablishmentStaff(models.Model):
    """A staff user allowed to split merges for an establishment (with the permission)."""

    establishment = models.ForeignKey(Establishment, on_delete=models.CASCADE,
                                      related_name="staff", verbose_name=_("établissement"))
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                             related_name="account_merge_establishments",
                             verbose_name=_("utilisateur"))

    class Meta:
        verbose_name = _("personnel de l'établissement")
        verbose_name_plural = _("personnels des établissements")
        constraints = [
            models.UniqueConstraint(fields=["establishment", "user"],
                                    name="account_merge_staff_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.user} ({self.establishment_id})"


class Account(models.Model):
    """A compte: never a password, see :class:`Credential`."""

    id = models.CharField(max_length=MAX_ID_LENGTH, primary_key=True)
    login = models.CharField(_("identifiant"), max_length=_KEY_LENGTH)
    login_key = models.CharField(max_length=_KEY_LENGTH, unique=True)
    role = models.CharField(_("rôle"), max_length=16, choices=ROLE_CHOICES)
    status = models.CharField(_("état"), max_length=16, choices=STATUS_CHOICES)
    display_name = models.CharField(_("titulaire"), max_length=MAX_NAME_LENGTH)
    establishment_uai = models.CharField(_("établissement émetteur"), max_length=_UAI_LENGTH,
                                         db_index=True)
    created_at = models.DateTimeField(_("émis le"))
    email = models.EmailField(_("e-mail"), max_length=MAX_EMAIL_LENGTH, null=True, blank=True)
    merged_into = models.ForeignKey("self", on_delete=models.PROTECT, null=True, blank=True,
                                    related_name="absorbed", db_index=False,
                                    verbose_name=_("regroupé dans"))
    #: The order in which accounts were absorbed into ``merged_into`` (rule 4 of
    #: the storage contract): 1, 2, 3... per ``merged_into``, given by the store.
    merged_seq = models.BigIntegerField(null=True, blank=True, editable=False)
    last_signed_in_at = models.DateTimeField(_("dernière connexion"), null=True, blank=True)

    class Meta:
        verbose_name = _("compte")
        verbose_name_plural = _("comptes")
        indexes = [
            models.Index(fields=["merged_into", "merged_seq"],
                         name="account_merge_acc_merged",
                         condition=Q(merged_into__isnull=False)),
            # retention: ACTIVE accounts by their last sign-in (the ORM binds the
            # status as a parameter, which a partial index could not serve)
            models.Index(fields=["status", "last_signed_in_at", "id"],
                         name="account_merge_acc_unused"),
        ]
        permissions = [
            ("split_account", _("Peut casser un regroupement pour ses établissements")),
        ]

    def __str__(self) -> str:
        return f"{self.login} ({self.display_name})"


class Letter(Account):
    """The accounts seen as the letters that created them (the admin's view).

    A letter's provisional password is printed once and never stored, so
    there is nothing to show but who it was for, when and whether it was
    used.
    """

    class Meta:
        proxy = True
        verbose_name = _("courrier de notification")
        verbose_name_plural = _("courriers de notification")
        ordering = ["-created_at"]


class Credential(models.Model):
    """The hash that proves an account.

    An absorbed (MERGED) account keeps the credential it had, so that its
    owner signing in with it is told where the account went
    (``account_merged``); it opens nothing any more.
    """

    account = models.OneToOneField(Account, on_delete=models.CASCADE, primary_key=True,
                                   related_name="credential")
    password_hash = models.TextField()
    kind = models.CharField(max_length=16, choices=KIND_CHOICES)
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = _("preuve d'identité")
        verbose_name_plural = _("preuves d'identité")
        indexes = [
            # retention: letters by expiry
            models.Index(fields=["kind", "expires_at", "account"],
                         name="account_merge_cred_expiry"),
        ]

    def __str__(self) -> str:
        return gettext("%(kind)s du compte %(account)s") % {
            "kind": self.get_kind_display(), "account": self.account_id}


class Child(models.Model):
    """A pupil, as first named by a letter.

    Each link keeps the child as *its* letter named it (rule 5 of the
    storage contract): the names and establishment the store reads back
    are the link's, never these.
    """

    id = models.CharField(max_length=MAX_ID_LENGTH, primary_key=True)
    first_name = models.CharField(_("prénom"), max_length=MAX_NAME_LENGTH)
    last_name = models.CharField(_("nom"), max_length=MAX_NAME_LENGTH)
    establishment_uai = models.CharField(_("établissement"), max_length=_UAI_LENGTH)

    class Meta:
        verbose_name = _("enfant")
        verbose_name_plural = _("enfants")

    def __str__(self) -> str:
        return f"{self.first_name} {self.last_name}"


class ChildLink(models.Model):
    """A child attached to an account, named as the letter that carried it named it.

    ``id`` orders an account's children (the order they were first linked);
    a child linked again to the same account keeps its row, so its place.
    """

    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="links",
                                verbose_name=_("compte"))
    child = models.ForeignKey(Child, on_delete=models.PROTECT, related_name="links",
                              verbose_name=_("enfant"))
    first_name = models.CharField(_("prénom"), max_length=MAX_NAME_LENGTH)
    last_name = models.CharField(_("nom"), max_length=MAX_NAME_LENGTH)
    establishment_uai = models.CharField(_("établissement"), max_length=_UAI_LENGTH)
    origin_account_id = models.CharField(_("compte d'origine"), max_length=MAX_ID_LENGTH)
    origin_establishment_uai = models.CharField(_("établissement d'origine"),
                                                max_length=_UAI_LENGTH)
    via_merge = models.BooleanField(_("par regroupement"))
    linked_at = models.DateTimeField(_("rattaché le"))

    class Meta:
        verbose_name = _("enfant rattaché")
        verbose_name_plural = _("enfants rattachés")
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["account", "child"],
                                    name="account_merge_link_unique"),
        ]
        indexes = [
            # The school's register finds the links its establishment's letters gave.
            models.Index(fields=["origin_establishment_uai", "child"],
                         name="account_merge_link_origin"),
        ]

    def __str__(self) -> str:
        return f"{self.first_name} {self.last_name}"


class Throttle(models.Model):
    """Failed attempts counted under one key (``signin:…``, ``merge:…`` or ``principal:…``)."""

    # Text: the key holds a normalised login as typed, which may be long.
    key = models.TextField(primary_key=True)
    consecutive = models.IntegerField()
    last_failure_at = models.DateTimeField(null=True)
    #: The times of the recent failures, ISO 8601 strings, oldest first.
    recent = models.JSONField(default=list)

    class Meta:
        verbose_name = _("compteur d'échecs")
        verbose_name_plural = _("compteurs d'échecs")
        indexes = [models.Index(fields=["last_failure_at"], name="account_merge_throttle_rest")]

    def __str__(self) -> str:
        return self.key


class Receipt(models.Model):
    """The receipt of a merge made with an idempotency key."""

    principal_id = models.CharField(max_length=MAX_ID_LENGTH)
    key = models.CharField(max_length=MAX_ID_LENGTH)
    login_key = models.CharField(max_length=_KEY_LENGTH)
    receipt = models.JSONField()

    class Meta:
        verbose_name = _("reçu de regroupement")
        verbose_name_plural = _("reçus de regroupement")
        constraints = [
            models.UniqueConstraint(fields=["principal_id", "key"],
                                    name="account_merge_receipt_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.principal_id}/{self.key}"


class OutboxEvent(models.Model):
    """An event waiting to be published, at its position in the outbox."""

    position = models.BigIntegerField(primary_key=True)
    name = models.CharField(max_length=64)
    payload = models.JSONField()
    published = models.BooleanField(default=False)

    class Meta:
        verbose_name = _("événement")
        verbose_name_plural = _("événements")
        ordering = ["position"]
        indexes = [
            models.Index(fields=["position"], name="account_merge_outbox_todo",
                         condition=Q(published=False)),
        ]

    def __str__(self) -> str:
        return f"{self.position} {self.name}"


class AuditEntry(models.Model):
    """One audited attempt: who did what, when, and how it ended.  No secrets."""

    at = models.DateTimeField(_("date"))
    action = models.CharField(max_length=32, choices=ACTION_CHOICES)
    outcome = models.CharField(_("résultat"), max_length=64)
    actor = models.CharField(_("acteur"), max_length=_KEY_LENGTH, null=True, blank=True)
    account_id = models.CharField(_("compte"), max_length=_KEY_LENGTH, null=True, blank=True)
    # Text: the login as typed, escaped, may be several times its length.
    login = models.TextField(_("identifiant saisi"), null=True, blank=True)
    detail = models.TextField(_("détail"), null=True, blank=True)

    class Meta:
        verbose_name = _("entrée du journal d'audit")
        verbose_name_plural = _("journal d'audit")
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["account_id", "id"], name="account_merge_audit_account",
                         condition=Q(account_id__isnull=False)),
            models.Index(fields=["actor", "id"], name="account_merge_audit_actor",
                         condition=Q(actor__isnull=False)),
            # retention: records by time, and by the login typed (ASCII case folded)
            models.Index(fields=["at", "id"], name="account_merge_audit_at"),
            models.Index(Lower("login"), name="account_merge_audit_login"),
        ]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.action} {self.outcome}"


# -- the way back: tiers email_index and notices -----------------------------------------

#: Longest key of an address (NFKC may lengthen the 254 characters of an address).
_EMAIL_KEY_LENGTH = 1024
NOTICE_STATUS_CHOICES = _choices(NoticeStatus, {"pending": _("à envoyer"), "sent": _("envoyé"),
                                                "dropped": _("abandonné")})


class EmailIndexEntry(models.Model):
    """Tier ``email_index``: the key of the address an account has on record."""

    account = models.OneToOneField(Account, on_delete=models.CASCADE, primary_key=True,
                                   related_name="email_index", verbose_name=_("compte"))
    key = models.CharField(_("adresse (forme comparée)"), max_length=_EMAIL_KEY_LENGTH)

    class Meta:
        verbose_name = _("adresse confirmée")
        verbose_name_plural = _("adresses confirmées")
        indexes = [models.Index(fields=["key", "account"], name="account_merge_email_key")]

    def __str__(self) -> str:
        return f"{self.account_id}"


class Notice(models.Model):
    """Tier ``notices``: the delivery state of one notice (never its text: it may hold a link)."""

    id = models.CharField(max_length=128, primary_key=True)
    event = models.ForeignKey(OutboxEvent, on_delete=models.CASCADE, db_column="position",
                              related_name="notices", verbose_name=_("événement"))
    role = models.CharField(_("destinataire"), max_length=64)
    status = models.CharField(_("état"), max_length=16, choices=NOTICE_STATUS_CHOICES)
    attempts = models.IntegerField(_("échecs d'envoi"), default=0)
    updated_at = models.DateTimeField(_("mis à jour le"), null=True, blank=True)

    class Meta:
        verbose_name = _("message")
        verbose_name_plural = _("messages")
        indexes = [models.Index(fields=["event", "id"], name="account_merge_notice_todo",
                                condition=Q(status="pending"))]

    def __str__(self) -> str:
        return self.id


class OutboxHead(models.Model):
    """Tier ``retention``: one row (id 1), the last outbox position given.

    Once the purge deleted outbox events, positions come from here too, so
    that a position is never given twice.
    """

    id = models.PositiveSmallIntegerField(primary_key=True)
    last_position = models.BigIntegerField()

    class Meta:
        verbose_name = _("dernière position des événements")
        verbose_name_plural = _("dernières positions des événements")

    def __str__(self) -> str:
        return str(self.last_position)


class NoticeCursor(models.Model):
    """Tier ``notices``: one row (id 1), the last outbox position turned into notices."""

    id = models.PositiveSmallIntegerField(primary_key=True)
    position = models.BigIntegerField()

    class Meta:
        verbose_name = _("curseur des messages")
        verbose_name_plural = _("curseurs des messages")

    def __str__(self) -> str:
        return str(self.position)
# -- the school's register (tier ``register``) ------------------------------------------


class RegisterEntry(models.Model):
    """A responsable of an establishment's register, and the account issued from the entry.

    ``children`` is what the last sync listed for them (``[id, first name,
    last name, UAI]``, sorted by id), empty once a whole register no longer
    lists them: the entry stays, so that a responsable who comes back finds
    their account.
    """

    establishment_uai = models.CharField(_("établissement"), max_length=_UAI_LENGTH)
    external_id = models.CharField(_("identifiant dans le registre"), max_length=MAX_ID_LENGTH)
    # No constraint: the account may be deleted (retention) before the entry.
    account = models.ForeignKey(Account, on_delete=models.DO_NOTHING, db_constraint=False,
                                related_name="register_entries", verbose_name=_("compte"))
    display_name = models.CharField(_("nom"), max_length=MAX_NAME_LENGTH)
    email = models.EmailField(_("e-mail"), max_length=MAX_EMAIL_LENGTH, null=True, blank=True)
    children = models.JSONField(_("enfants listés"), default=list)

    class Meta:
        verbose_name = _("entrée du registre")
        verbose_name_plural = _("registre des établissements")
        ordering = ["establishment_uai", "external_id"]
        constraints = [
            models.UniqueConstraint(fields=["establishment_uai", "external_id"],
                                    name="account_merge_register_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.establishment_uai} {self.external_id} ({self.display_name})"


class RegisterClosure(models.Model):
    """An account the register closed (left with no child), and when."""

    account = models.OneToOneField(Account, on_delete=models.DO_NOTHING, db_constraint=False,
                                   primary_key=True, related_name="closure",
                                   verbose_name=_("compte"))
    establishment_uai = models.CharField(_("établissement"), max_length=_UAI_LENGTH)
    closed_at = models.DateTimeField(_("fermé le"))

    class Meta:
        verbose_name = _("compte fermé")
        verbose_name_plural = _("comptes fermés")
        # retention: closed accounts found by the time of their closure
        indexes = [models.Index(fields=["closed_at", "account"],
                                name="account_merge_closure_time")]

    def __str__(self) -> str:
        return f"{self.account_id} ({self.closed_at:%Y-%m-%d})"


# -- the project's users --------------------------------------------------------------------


class UserLink(models.Model):
    """The project's user (``AUTH_USER_MODEL``) who owns an account of the library.

    One account per user and one user per account.  Written by
    :mod:`account_merge.contrib.django.users` (the authentication backend,
    ``link_user``, ``import_user``); the account is named by its id only,
    so that the store may live on another database than the users.
    """

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                                primary_key=True, related_name="account_merge_link",
                                verbose_name=_("utilisateur"))
    account_id = models.CharField(_("compte"), max_length=MAX_ID_LENGTH, unique=True)
    linked_at = models.DateTimeField(_("lié le"), auto_now_add=True)

    class Meta:
        verbose_name = _("utilisateur lié")
        verbose_name_plural = _("utilisateurs liés")

    def __str__(self) -> str:
        return f"{self.user_id} → {self.account_id}"
