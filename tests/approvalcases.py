"""Test helper: a rule writing one channel that waits for approval and one that publishes at once
(tests/test_approval.py, tests/test_actions.py)."""
from __future__ import annotations

# cutouts waits for approval; webshop publishes at once. One rule writes both, from the cut-out.
TWO_CHANNELS = """\
name: cutouts
steps:
  - remove_background: {}
outputs:
  - {channel: cutouts, from: remove_background}
  - {channel: webshop, from: remove_background}
"""
