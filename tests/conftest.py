"""Shared fixtures. Emulators and servers the tests start live in tests/fixtures/."""

pytest_plugins = [
    "tests.fixtures.azurite",
    "tests.fixtures.scripted_openai",
    "tests.fixtures.app",
    "tests.fixtures.webhook_receiver",
    "tests.fixtures.llama_server",
    "tests.fixtures.browser",
]
