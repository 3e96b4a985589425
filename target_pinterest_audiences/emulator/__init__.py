"""The local Pinterest API emulator: see server.py for what it is and why it exists.

Modules by job: server.py (the Emulator: lifecycle, request handling, routing), transport.py (HTTP
plumbing), ads.py (customer-list and audience endpoints), oauth.py (OAuth endpoints, bearer tokens),
control.py (state, faults and settings from Python or /_emulator), faults.py (fault rules),
state.py (the data), validation.py (checks against Pinterest's OpenAPI shapes), errors.py (error
answers), cli.py (the program).
"""

from target_pinterest_audiences.emulator.cli import main
from target_pinterest_audiences.emulator.control import max_events_in_window
from target_pinterest_audiences.emulator.errors import ApiError
from target_pinterest_audiences.emulator.server import Emulator

__all__ = ["ApiError", "Emulator", "main", "max_events_in_window"]
