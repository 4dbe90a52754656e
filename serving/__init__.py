"""finsent on Ray Serve: the deployment (``serving.deployment``), its typed app builder (``serving.app``), the
one config (``serving.config.ServeConfig``), HTTP schemas, metrics, an HTTP client and the ``finsent serve`` /
``finsent classify`` CLI. Importing the package is cheap: Ray, torch and FastAPI load only when used.
"""

__all__: list[str] = []
