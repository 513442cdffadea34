"""The Celery side of hebdo: the Celery app built from the Flask app (`celery_app`), thin
tasks over the domain (`tasks`) and the worker's signal handlers (`signals`). It imports
`service`; `service` never imports it and queues its tasks by name."""
