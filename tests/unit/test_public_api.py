"""The public API is small and changes only on purpose."""

import tidings


def test_public_names_are_exactly_these() -> None:
    assert sorted(tidings.__all__) == [
        "Agent", "App", "AppLoadError", "Batch", "ConfigurationError", "ConnectionFailed",
        "EmbeddedServerError", "Envelope", "Message", "MigrationsPending", "PartlyPublished",
        "PayloadError",
        "Priority", "Reject", "Retry", "Settings", "Signal", "TidingsError", "Topic",
        "UnknownTopic", "Worker", "__version__",
    ]


def test_every_public_name_is_importable() -> None:
    for name in tidings.__all__:
        assert getattr(tidings, name) is not None


def test_every_error_derives_from_the_root() -> None:
    for name in tidings.__all__:
        value = getattr(tidings, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, tidings.TidingsError)
