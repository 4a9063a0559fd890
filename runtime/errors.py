"""The one error class of the runtime: bad input a user can fix, said in one line."""

from __future__ import annotations


class RuntimeModelError(ValueError):
    """A compiled model, weights file, prompt or size the runtime cannot use; the message
    names what is wrong and what to do."""
