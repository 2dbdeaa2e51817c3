"""Access control of the API and the pages: roles (:mod:`.roles`), credentials and their
hashes (:mod:`.secrets`), users, tokens and sessions (:mod:`.accounts`), failed-login limits
(:mod:`.throttle`), signed snapshot links (:mod:`.links`). The FastAPI side is
:mod:`aggregator.api.access`; the commands are ``secagg user`` and ``secagg token``
(:mod:`.cli`). Agents' download tokens for over-the-air updates are separate
(:mod:`aggregator.ota.tokens`)."""
