"""The review page: a Starlette app with server-rendered Jinja2 templates and a few lines of plain JavaScript.

Layout (one page per module, like the stages):

- ``app.py``       ``create_app(config)``: the app, its middleware and the page modules' routes (``PAGES``)
- ``server.py``    ``--listen`` parsing, uvicorn in a thread for ``assetd run``, in the foreground for ``assetd serve``
- ``templating.py`` the Jinja2 environment and ``render``
- one module per page (each has ``routes()``), templates in ``templates/``, every asset in ``static/``
  (served by the app: no CDN, no build step)

The store is the only thing the page reads and changes; a request never names a file (files are served by the id
of a record the store holds).
"""
