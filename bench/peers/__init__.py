"""The serving bench's peers and harness (``bench/serving_bench.py`` imports the harness).

Apps, each run as a script in its own process: ``fastapi_app.py`` (main venv),
``litserve_app.py`` and ``bentoml_service.py`` (the peers venv, ``.bench/peers-venv``),
``mlflow_model.py`` (writes the MLflow model ``mlflow models serve`` loads). Harness:
``install.py`` (wrk and the peers venv), ``harness.py`` (starting, measuring and stopping a
server; one wrk run with ``wrk_post.lua``), ``report.py`` (ratios, goals, the markdown).
"""
