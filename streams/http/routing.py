"""Which worker answers for a workspace or a contract.

Faust's router hashes a key as the table's changelog would serialize it (JSON: ``"ws_1"``), but
meterwatch keys every record by the raw UTF-8 id (``ws_1``) and a table's data lives on the
partition of that raw key. Routing by the JSON form sent most requests to a worker that did not
hold the workspace once more than one worker ran.
"""

from __future__ import annotations

from typing import Any

from faust.app.router import Router


class RawKeyRouter(Router):
    @classmethod
    def _get_serialized_key(cls, table: Any, key: Any) -> bytes:
        return key.encode() if isinstance(key, str) else key
