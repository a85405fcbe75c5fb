"""Faithful fakes of Google's and Apple's push servers: FCM HTTP v1 with its OAuth2 token
endpoint (:mod:`fakes.fcm`) and APNs over TLS + HTTP/2 (:mod:`fakes.apns`).

They check what the real servers check and answer every documented error, so the
adapters meet them exactly as they would meet Google and Apple. The sandbox
(``gateway serve --sandbox``) runs them in-process; the tests run them on loopback.
They are stand-ins for the outside world, not transports: nothing in ``adapters`` or
``gateway`` below the sandbox imports them.
"""
