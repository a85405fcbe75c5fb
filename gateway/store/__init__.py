"""Everything the gateway keeps, in PostgreSQL: the store (the API's and dashboard's
side), the delivery queue (the dispatcher's side, behind a small interface with an
in-memory twin for tests), typed records, and the SQL itself (``sql/``)."""
