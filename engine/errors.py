"""Exceptions the engine raises; jobs turn each into one clear line and a non-zero exit."""

from __future__ import annotations


class EngineError(Exception):
    """Base of every error the engine raises on purpose."""


class ConfigError(EngineError, ValueError):
    """A configuration key, type or value is invalid."""


class UnknownLabelError(EngineError, ValueError):
    """A label name or label space is not known."""


class FingerprintMismatch(EngineError):
    """A committed stage output was produced by a different configuration or input."""


class MissingExtra(EngineError, ImportError):
    """An optional dependency is not installed."""


class SourceFormatError(EngineError, ValueError):
    """A dataset on disk does not match the format its adapter expects."""


class SourceRecordError(SourceFormatError):
    """One record of a source file is malformed (a pixel CSV row with a bad pixel count, value or label code).

    Raised when the row's bytes are read, never while listing: ingest quarantines that row as ``bad_record`` with
    the message as detail, and the other rows go on.
    """


class WriterLocked(EngineError):
    """Another process is writing the same stage output (engine.io.lock)."""


class CorruptFile(EngineError):
    """A committed file is not what its stage wrote (size or sha256 differs from its ``_SUCCESS.json``)."""


class StorageError(EngineError, OSError):
    """The storage root cannot be created, is not writable, or is full."""


class ReviewImportError(EngineError):
    """People's answers the engine cannot take: an export of another project, a task it never sent, a choice the
    labeling config lacks, a batch imported twice (engine/review)."""


class ReviewWaiting(EngineError):
    """A round has a review batch whose answers are not imported yet: it stops before its selection (not a failure:
    the campaign job reports it in one line and exits 0)."""

    def __init__(self, round_index: int, review_dir: str, faces: int) -> None:
        super().__init__(
            f"round r{round_index:03d} waits for people: {faces} faces in {review_dir} (a Label Studio project: "
            "docs/review.md); import their answers with `fer-engine review import EXPORT.json`, then run the campaign "
            "again"
        )
        self.round, self.review_dir, self.faces = round_index, review_dir, faces


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (what ``timeout``, ``kill``, a scheduler or a job manager send): handled like Ctrl-C, so
    committed stages are kept, the job prints one ``interrupted:`` line and exits 143 (128 + SIGTERM)."""
