"""The app's configuration: label ``account_merge``."""

from __future__ import annotations

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class AccountMergeConfig(AppConfig):
    """``account_merge.contrib.django``, labelled ``account_merge`` (tables, permissions)."""

    name = "account_merge.contrib.django"
    label = "account_merge"
    verbose_name = _("Regroupement de comptes")
    # Fixed here, so that the migrations do not depend on the project's
    # DEFAULT_AUTO_FIELD.
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.core import checks
        from django.core.signals import request_finished, request_started, setting_changed
        from django.utils import translation

        from account_merge import messages
        from account_merge.contrib.django import service
        from account_merge.contrib.django.conf import check_databases, check_settings
        from account_merge.contrib.django.storage import close_obsolete_side_connections

        # The library's messages (error_message...) follow Django's active language.
        messages.follow_language(translation.get_language)
        checks.register(check_settings)
        checks.register(check_databases)
        setting_changed.connect(service.forget_on_setting_changed,
                                dispatch_uid="account_merge.forget_service")
        # The side connections live as long as Django's own (CONN_MAX_AGE).
        for signal in (request_started, request_finished):
            signal.connect(close_obsolete_side_connections,
                           dispatch_uid="account_merge.close_side_connections")
