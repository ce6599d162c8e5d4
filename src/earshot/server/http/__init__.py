"""The HTTP application: the ASGI app and its lifespan, REST, /ws/subscribe, the page and
API docs, the connection guard."""
