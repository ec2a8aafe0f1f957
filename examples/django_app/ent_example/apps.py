"""The example ENT's app."""

from django.apps import AppConfig


class EntExampleConfig(AppConfig):
    name = "ent_example"
    verbose_name = "ENT d'exemple"
