"""A finished round located on storage, with its campaign's configuration: what the products that consume a round
(report, export, a re-run of its curation) open."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from engine.config import Config, build
from engine.errors import ConfigError
from engine.io import fs
from engine.labels import LabelSpace, campaign_space
from engine.layout import CampaignLayout, RoundLayout


@dataclass(frozen=True)
class RoundRef:
    """A round on storage with its campaign's configuration (as written to ``config.json`` at campaign start)."""

    root: str
    campaign: str
    index: int
    cfg: Config

    @property
    def layout(self) -> RoundLayout:
        return CampaignLayout(self.root, self.campaign).round(self.index)

    @property
    def campaign_layout(self) -> CampaignLayout:
        return CampaignLayout(self.root, self.campaign)

    @property
    def space(self) -> LabelSpace:
        return campaign_space(self.cfg)


def open_round(round_dir: str, overrides: Sequence[str] = ()) -> RoundRef:
    """The round stored at ``<root>/campaigns/<name>/rounds/rNNN`` (local path or URI).

    The config is rebuilt from the campaign's ``config.json``, then ``a.b=value`` overrides are applied (e.g.
    ``report.gallery_per_class=4``); ``storage.root`` is taken from ``round_dir`` so a moved storage root still works.

    Raises:
        ConfigError: the path does not end in ``campaigns/<name>/rounds/rNNN`` or the campaign has no config.json.
    """
    d = round_dir.rstrip("/")
    if "://" not in d:
        d = os.path.abspath(d)
    parts = d.split("/")
    if len(parts) < 5 or parts[-2] != "rounds" or parts[-4] != "campaigns" or not re.fullmatch(r"r\d{3,}", parts[-1]):
        raise ConfigError(
            f"{round_dir} is not a round directory; pass <storage root>/campaigns/<campaign>/rounds/rNNN"
        )
    root = "/".join(parts[:-4]) or "/"
    campaign, index = parts[-3], int(parts[-1][1:])
    config_path = CampaignLayout(root, campaign).config
    flat = fs.read_json_or_none(config_path)
    if flat is None:
        raise ConfigError(f"{config_path} is missing; is {round_dir} a round written by engine.campaign?")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        flat = {k: v for k, v in flat.items() if not k.startswith(key.strip() + ".")}
        flat[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
    return RoundRef(root, campaign, index, config_from_flat(flat, root=root, where=config_path))


def config_from_flat(flat: dict[str, Any], *, root: str, where: str = "config.json") -> Config:
    """Inverse of :func:`engine.config.flatten` (with ``storage.root`` replaced by ``root``)."""
    nested: dict[str, Any] = {}
    for dotted, value in flat.items():
        node = nested
        *path, last = dotted.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = value
    nested.setdefault("storage", {})["root"] = root
    return build(Config, nested, where=where)
