"""Dead letters: the records the consumer cannot apply, sent to the dead-letter topic.

1. a `DeadLetter` is a record, a reason (homefeed.events.DEAD_LETTER_REASONS) and a detail;
2. sent with the original key and value and `reason`, `detail`, `source` headers; a value over
   `DEAD_LETTER_MAX_VALUE_BYTES` (or one the topic refuses as too large) as a JSON summary
   instead (`dead_letter_summary`), a key over `DEAD_LETTER_MAX_KEY_BYTES` as its SHA-256;
3. every dead letter is acknowledged before the batch's offsets are committed; one that is not
   within `DEAD_LETTER_TIMEOUT_S` fails the batch as an outage (`DeadLetterUnavailable`) and the
   producer is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

from homefeed.stream import metrics as M

log = logging.getLogger(__name__)


# A dead letter carries the whole original value up to this size; above it (a value near the
# broker's message limit would make the dead-letter send itself fail) a JSON summary instead:
# reason, source, length and SHA-256 of the value, so the record can still be found and audited.
DEAD_LETTER_MAX_VALUE_BYTES = 256 * 1024
DEAD_LETTER_MAX_KEY_BYTES = 1024
# A dead letter not acknowledged within this bound fails the batch as an outage (retried,
# uncommitted, `homefeed_stream_dead_letter_failures_total`), never silently.
DEAD_LETTER_TIMEOUT_S = 30


@dataclass
class DeadLetter:
    record: object  # kafka ConsumerRecord
    reason: str
    detail: str


class DeadLetterUnavailable(RuntimeError):
    """The dead-letter topic could not take a record (broker down): retry the batch."""


class DeadLetterSender:
    """The sequence builder's dead-letter methods (homefeed.stream.builder.SequenceBuilder mixes
    them in): they use its `settings`, `dlq` (a producer) and `dlq_factory`."""

    def _dead_letter(self, dead: list[DeadLetter]) -> None:
        """Every dead letter is on the broker before this returns (offsets are committed after)."""
        from kafka.errors import KafkaError, MessageSizeTooLargeError

        if not dead:
            return
        if self.dlq is None:
            raise RuntimeError("invalid records but no dead-letter producer configured")
        try:
            sent = [(item, self._send_dead_letter(item, summary=False)) for item in dead]
            self.dlq.flush(timeout=DEAD_LETTER_TIMEOUT_S)
            for item, future in sent:
                try:
                    future.get(timeout=0)
                except MessageSizeTooLargeError:  # the topic's limit is below ours: send the summary
                    self._send_dead_letter(item, summary=True).get(timeout=DEAD_LETTER_TIMEOUT_S)
        except KafkaError as exc:
            M.DEAD_LETTER_FAILURES.inc()
            self._rebuild_dlq()
            raise DeadLetterUnavailable(
                f"{len(dead)} dead letters not acknowledged within {DEAD_LETTER_TIMEOUT_S} s "
                f"({type(exc).__name__}: {exc}); the batch waits, uncommitted") from exc

    def _rebuild_dlq(self) -> None:
        if self.dlq_factory is None:
            return
        try:
            self.dlq.close(timeout=0)
        except Exception as exc:  # a broken client may fail to close: it is dropped either way
            log.debug("dead-letter producer close failed: %s", exc)
        self.dlq = self.dlq_factory()
        log.warning("dead-letter producer rebuilt after a failure")

    def _send_dead_letter(self, item: DeadLetter, summary: bool):
        rec = item.record
        value = rec.value if rec.value is not None else None
        key = rec.key
        headers = [("reason", item.reason.encode()), ("detail", item.detail[:500].encode("utf-8", "replace")),
                   ("source", f"{rec.topic}:{rec.partition}:{rec.offset}".encode())]
        if summary or (value is not None and len(value) > DEAD_LETTER_MAX_VALUE_BYTES):
            value = dead_letter_summary(item)
            headers.append(("summarized", b"true"))
        if key is not None and len(key) > DEAD_LETTER_MAX_KEY_BYTES:
            key = hashlib.sha256(key).hexdigest().encode()
        return self.dlq.send(self.settings.dead_letter_topic, value=value, key=key, headers=headers)


def dead_letter_summary(item: DeadLetter) -> bytes:
    """What a dead letter carries instead of a value too large for the topic."""
    rec = item.record
    value = rec.value or b""
    return json.dumps({
        "summarized": True, "reason": item.reason, "detail": item.detail[:500],
        "topic": rec.topic, "partition": rec.partition, "offset": rec.offset,
        "timestamp": rec.timestamp, "length": len(value), "sha256": hashlib.sha256(value).hexdigest(),
        "head": value[:256].decode("utf-8", "replace"),
    }).encode()
