"""The HTTP API: one router per concern, combined into ``api_router``."""

from fastapi import APIRouter

from service.api.routes import docs, health, intent, metrics, model, try_page

api_router = APIRouter()
for _module in (intent, model, health, metrics, docs, try_page):
    api_router.include_router(_module.router)
