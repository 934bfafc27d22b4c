"""Live intake: wire-contract decoding, the MQTT subscriber and `emfence run`.

``ingest.decode`` is pure and imported by ``emfence replay`` too; the MQTT parts
(``ingest.mqtt``, ``ingest.service``) import aiomqtt only when used.
"""
