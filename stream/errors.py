"""Errors of the stream package: one base class, one machine-readable ``code`` per kind.

``RecordError`` subclasses describe a single input record that cannot be labelled; the runner sends such a
record to the dead-letter topic with the code in the ``finsent-error`` header. The other ``StreamError``
subclasses describe the pipeline itself (broker, produce, commit) and never go to the DLQ.
"""

from __future__ import annotations

from classifier.errors import FinsentError


class StreamError(FinsentError):
    """Base class of every error the stream package raises."""

    code = "stream_error"


# ---------------------------------------------------------------------------------------------- per record
class RecordError(StreamError):
    """One input record cannot be labelled; it goes to the dead-letter topic with ``code``."""

    code = "record_error"


class InvalidUtf8Error(RecordError):
    """The record value is not valid UTF-8."""

    code = "invalid_utf8"


class BadJsonError(RecordError):
    """The value is not a usable JSON news item: it starts with ``{`` but does not parse; it is JSON null, a
    number, a boolean or an array; it nests deeper than ``stream.codec.MAX_JSON_DEPTH``; it holds a number
    out of range or an unpaired surrogate escape; or its ``id``/``title``/``content`` have the wrong types."""

    code = "bad_json"


class NoTextError(RecordError):
    """Nothing to classify: empty value, or a JSON object whose title and content are missing or blank."""

    code = "no_text"


class TextTooLongError(RecordError):
    """The text to classify is longer than ``max_text_chars``."""

    code = "text_too_long"


class ClassifierError(RecordError):
    """The classifier failed on this record (after the configured retries) or answered malformed output."""

    code = "classifier_error"


#: every per-record error code, in the order docs/stream.md lists them
RECORD_ERROR_CODES: tuple[str, ...] = tuple(
    c.code for c in (InvalidUtf8Error, BadJsonError, NoTextError, TextTooLongError, ClassifierError)
)


# ---------------------------------------------------------------------------------------------- pipeline
class BrokerError(StreamError):
    """The embedded broker could not be started or stopped."""

    code = "broker_error"


class ProduceError(StreamError):
    """Output or DLQ records were not acknowledged by the broker; the batch is not committed."""

    code = "produce_failed"


class CommitError(StreamError):
    """Committing consumed offsets failed; the records will be delivered again (at-least-once)."""

    code = "commit_failed"
