"""finsent stream: Kafka consumer group → classifier → sentiment topic, with no message lost.

Modules, one concern each: ``codec`` (the pure per-record transformation), ``config`` (``StreamConfig``),
``runner`` (the consumer-group worker), ``classify`` (Predictor / Serve handle adapters), ``workers``
(processes, Ray actors, signals), ``metrics`` (Prometheus), ``broker`` (embedded Tansu), ``tools`` (produce,
tail, replay-dlq), ``cli``. Importing the package is cheap: Kafka, torch and Ray load only when used.
"""
