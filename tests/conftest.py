"""Shared test setup: no network, no developer-installed plugins, tiny models only."""
import os

# open_clip retries a download for ~47 s without a network; fail at once instead.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Keep plugins installed on a developer's machine out of the tests.
os.environ.setdefault("GATESCOPE_DISABLE_PLUGIN_AUTOLOAD", "1")
