"""The secrets the operator generates are ones a Courier process in prod mode agrees to start with."""

from __future__ import annotations

import json

from im_operator import credentials

from services.common.settings import JwtSettings, Settings


def test_every_generated_courier_secret_passes_the_prod_rule() -> None:
    for _ in range(20):  # random values: a few draws, not one lucky one
        values = credentials.generate()
        jwt = JwtSettings(keys=json.loads(values[credentials.JWT_KEYS]), active_kid=values[credentials.JWT_ACTIVE_KID])
        settings = Settings(
            mode="prod",
            secret=values[credentials.SECRET],
            internal_token=values[credentials.INTERNAL_TOKEN],
            jwt=jwt,
        )
        settings.refuse_insecure_defaults()  # raises SystemExit, naming the setting, when one is weak
