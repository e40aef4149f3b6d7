"""Generated span batches sent to a topic, kept for the expected counts."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaProducer

from spanmetrics.dev.synth import SpanGenerator, encode_request


class Batches:
    """A producer of the synthetic shop's spans (``otlp_proto``), one request per record."""

    def __init__(self, bootstrap: str, topic: str, seed: int, **options: Any) -> None:
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **options)
        self.topic = topic
        self.generator = SpanGenerator(seed=seed)
        #: Every request sent, in order.
        self.sent: list[Any] = []

    async def start(self) -> None:
        await self.producer.start()

    async def stop(self) -> None:
        await self.producer.stop()

    async def send(self, records: int, spans: int = 100) -> None:
        """Send ``records`` records of ``spans`` spans each, waiting for each ack."""
        for _ in range(records):
            request = self.generator.batch_request(spans)
            await self.producer.send_and_wait(self.topic, encode_request(request, "otlp_proto"))
            self.sent.append(request)
