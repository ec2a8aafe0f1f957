"""The example ENT's URLs: the parent's pages, the admin for the establishments, error pages."""

from django.contrib import admin
from django.urls import include, path

from ent_example import views

# The establishments' side: Django's admin, named for the staff who use it.
admin.site.site_header = "Scolarité Services · établissements"
admin.site.site_title = "Scolarité Services"

pages = ([
    path("", views.accueil, name="accueil"),
    path("connexion/", views.connexion, name="connexion"),
    path("activation/", views.activation, name="activation"),
    path("deconnexion/", views.deconnexion, name="deconnexion"),
    path("mon-compte/", views.mon_compte, name="mon_compte"),
    path("mon-compte/enfants/", views.enfants, name="enfants"),
    path("mon-compte/confirmer-identite/", views.confirmer_identite, name="confirmer_identite"),
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

# French error pages with a way back (403 and 429 are templates: 403.html, 429.html).
handler400 = views.bad_request
handler404 = views.page_not_found
handler500 = views.server_error
