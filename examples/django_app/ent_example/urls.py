"""The example ENT's URLs: the parent's pages, and the admin for the establishments."""

from django.contrib import admin
from django.urls import include, path

from ent_example import views

pages = ([
    path("", views.home, name="home"),
    path("connexion/", views.connexion, name="connexion"),
    path("activation/", views.activation, name="activation"),
    path("deconnexion/", views.deconnexion, name="deconnexion"),
    path("mon-compte/", views.mon_compte, name="mon_compte"),
    path("mon-compte/enfants/", views.enfants, name="enfants"),
    path("mon-compte/regrouper/", views.regrouper, name="regrouper"),
    path("mon-compte/regrouper/confirmation/", views.confirmation, name="confirmation"),
], "ent")

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include(pages)),
]
