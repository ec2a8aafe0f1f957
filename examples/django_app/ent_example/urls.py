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
    path("mon-compte/mes-donnees/", views.mes_donnees, name="mes_donnees"),
    # the way back
    path("mot-de-passe-oublie/", views.mot_de_passe_oublie, name="mot_de_passe_oublie"),
    path("identifiant-oublie/", views.identifiant_oublie, name="identifiant_oublie"),
    path("demande-envoyee/", views.demande_envoyee, name="demande_envoyee"),
    path("mot-de-passe/nouveau/", views.nouveau_mot_de_passe, name="nouveau_mot_de_passe"),
    path("mot-de-passe/<str:token>/", views.lien_mot_de_passe, name="lien_mot_de_passe"),
    path("courriel/confirmer/", views.confirmer_courriel, name="confirmer_courriel"),
    path("courriel/<str:token>/", views.lien_courriel, name="lien_courriel"),
], "ent")

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include(pages)),
]
