"""The composition root: one Luna home with its profile, device and models, built once. The CLI, the
Dagster refine job, the query service and the ComfyUI nodes open one and ask it for the vault and
the refiner, so each surface answers with the same models."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from luna_core.ask.vault_query import VaultQuery
from luna_core.home.home import LunaHome
from luna_core.models.profiles import AUTO, ModelProfile
from luna_core.refine.options import SourceSettings
from luna_core.refine.refiner import Refiner


@dataclass
class LunaSession:
    home: LunaHome
    profile: ModelProfile
    device: str = AUTO
    dtype: str = AUTO
    _vault: VaultQuery | None = field(default=None, repr=False, compare=False)

    @classmethod
    def open(
        cls,
        home: LunaHome | str | Path | None = None,
        *,
        profile: str | None = None,
        device: str | None = AUTO,
        dtype: str | None = AUTO,
    ) -> LunaSession:
        """An existing home (a path, $LUNA_HOME or ./luna_home) and the models its settings name;
        `profile` overrides the home's profile for this session; an `auto` device or dtype is the
        home's `models.device` / `models.dtype`."""
        luna_home = home if isinstance(home, LunaHome) else LunaHome.existing(home)
        settings = luna_home.settings()
        device = settings.text("models.device") if (device or AUTO) == AUTO else device
        dtype = settings.text("models.dtype") if (dtype or AUTO) == AUTO else dtype
        return cls(luna_home, luna_home.profile(profile), device, dtype)

    def vault(self) -> VaultQuery:
        """The query layer over this home's vault and index, made on first use."""
        if self._vault is None:
            self._vault = VaultQuery(self.home, self.profile, self.device, self.dtype)
        return self._vault

    def refiner(
        self, source: SourceSettings = SourceSettings(), ip_adapter: str | None = None
    ) -> Refiner:
        """A refiner whose items are conditioned from `source`, on this session's models."""
        return Refiner(self.home, self.profile, source, self.device, self.dtype, ip_adapter)
