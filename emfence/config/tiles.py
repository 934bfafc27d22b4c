"""The ``[console.tiles]`` table: the base map under the console's maps.

Empty (the default): no base map; the maps draw boundaries, devices and tracks on a
plain background and ask nothing of any server. Set, the page fetches tiles from
``url``, an XYZ template (``{z}/{x}/{y}``, optional ``{s}``); a WMTS server in Web
Mercator answers the same template in its KVP form
(``...&TILEMATRIX={z}&TILEROW={y}&TILECOL={x}``). ``crs`` says in which datum the
tiles are drawn: every position the console holds is WGS-84, and the page converts it to
GCJ-02 before drawing it over GCJ-02 tiles (Amap, Tencent, Tianditu's GCJ-02 layers).

The key may also be one string, the ``url`` (WGS-84, no attribution).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from emfence.config.errors import ConfigError

CRS_CHOICES = ("wgs84", "gcj02")
# The placeholders Leaflet fills in a tile URL; any other would fail in the browser.
_PLACEHOLDERS = frozenset({"s", "z", "x", "y", "-y", "r"})
MAX_ZOOM = 22
# An origin's host after {s} is filled in: letters, digits, dots, hyphens, a port.
_HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?")


@dataclass(frozen=True)
class TilesConfig:
    # The tile URL template ("https://gis.example.gov.cn/tiles/{z}/{x}/{y}.png"); empty:
    # no base map (the boundary-only view, no tile requests).
    url: str = ""
    # Who drew the map, shown in the map's corner (plain text).
    attribution: str = ""
    # The datum the tiles are drawn in: "wgs84" or "gcj02".
    crs: str = "wgs84"
    # The letters (one subdomain each) that fill {s} in url, e.g. "abc" or "01234567".
    subdomains: str = "abc"
    # The zoom levels the tile server has.
    min_zoom: int = 0
    max_zoom: int = 18

    def origins(self) -> list[str]:
        """Every origin (scheme://host[:port]) tiles are fetched from, {s} filled in with
        each subdomain; empty without a url."""
        if not self.url:
            return []
        parts = urlsplit(self.url)
        fills = list(self.subdomains) if "{s}" in parts.netloc else [""]
        return sorted({f"{parts.scheme}://{parts.netloc.replace('{s}', s)}" for s in fills})

    def page(self) -> dict | None:
        """What the page needs to draw the base map (None without one)."""
        if not self.url:
            return None
        return {"url": self.url, "attribution": self.attribution, "crs": self.crs,
                "subdomains": self.subdomains, "min_zoom": self.min_zoom,
                "max_zoom": self.max_zoom}


def check_tiles(t: TilesConfig, source: str | None) -> None:
    """ConfigError naming the ``console.tiles`` key at fault."""
    def bad(key: str, message: str) -> ConfigError:
        return ConfigError(message, key=f"console.tiles.{key}", source=source)

    if t.crs not in CRS_CHOICES:
        raise bad("crs", f'must be "wgs84" or "gcj02", got {t.crs!r}')
    if not 0 <= t.min_zoom <= t.max_zoom <= MAX_ZOOM:
        raise bad("max_zoom", f"zooms must satisfy 0 <= min_zoom <= max_zoom <= {MAX_ZOOM}, "
                              f"got {t.min_zoom} and {t.max_zoom}")
    if len(t.attribution) > 500:
        raise bad("attribution", "must be at most 500 characters")
    if not t.url:
        return
    parts = urlsplit(t.url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise bad("url", f"must be an http:// or https:// URL template, got {t.url!r}")
    if re.search(r"[\s'\";,]", t.url):
        raise bad("url", "must not hold spaces, quotes, commas or semicolons")
    names = re.findall(r"\{([^}]*)\}", t.url)
    unknown = sorted(set(names) - _PLACEHOLDERS)
    if unknown:
        raise bad("url", f"unknown placeholder {{{unknown[0]}}}; known: {{s}} {{z}} {{x}} "
                         "{y} {-y} {r}")
    if "z" not in names or "x" not in names or not {"y", "-y"} & set(names):
        raise bad("url", "must hold {z}, {x} and {y} (WMTS: TILEMATRIX={z}&TILEROW={y}"
                         "&TILECOL={x})")
    if "{s}" in parts.path or "{s}" in parts.query:
        raise bad("url", "{s} may stand only in the host name")
    if "{s}" in parts.netloc and not re.fullmatch(r"[A-Za-z0-9]+", t.subdomains):
        raise bad("subdomains", "must be one or more letters or digits (one subdomain each) "
                                "when url holds {s}")
    for origin in t.origins():
        if not _HOST.fullmatch(origin.split("://", 1)[1]):
            raise bad("url", f"host of {origin!r} is not a host name")
