"""Kafka plumbing shared by the runner and the tools: topic creation and client settings."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

log = logging.getLogger(__name__)


def ensure_topics(
    common: Mapping[str, Any], topics: Sequence[str], *, partitions: int = 1, replication_factor: int = 1
) -> list[str]:
    """Create the topics that do not exist yet; return the ones created. Safe when several workers race."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(client_id="finsent-admin", **common)
    try:
        existing = set(admin.list_topics())
        missing = [t for t in dict.fromkeys(topics) if t not in existing]
        created: list[str] = []
        for topic in missing:
            try:
                admin.create_topics([NewTopic(topic, partitions, replication_factor)])
                created.append(topic)
            except TopicAlreadyExistsError:
                pass  # another worker created it first
        if created:
            log.info("created topics %s (%d partitions)", created, partitions)
        return created
    finally:
        admin.close()
