"""The one exception type for bad input that a user can fix.

Every check on user input (arguments, files, checkpoints, images) raises
``InputError`` with a message that names the problem and the fix.  It is a
``ValueError`` so that library callers can catch the usual type; the command
line turns it into one line on stderr and exit code 2.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input: a wrong argument, a missing or unfitting file, an invalid image."""
