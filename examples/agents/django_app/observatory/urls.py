from django.urls import path

from alert_manager import views

urlpatterns = [path("status/", views.status)]
