"""``console.tiles``: the console's base map, one URL string or a table; bad values are
refused at start with an error naming the key."""

import re
import tomllib
from pathlib import Path

import pytest

from emfence.config import ConfigError, TilesConfig, config_from_dict, load_config

TIANDITU = ("https://t{s}.tianditu.gov.cn/vec_w/wmts?SERVICE=WMTS&REQUEST=GetTile"
            "&VERSION=1.0.0&LAYER=vec&STYLE=default&TILEMATRIXSET=w&FORMAT=tiles"
            "&TILEMATRIX={z}&TILEROW={y}&TILECOL={x}&tk=0123abcd")


def test_no_tiles_by_default_and_then_no_origin_and_nothing_for_the_page():
    t = config_from_dict({}).console.tiles
    assert t == TilesConfig() and t.url == "" and t.origins() == [] and t.page() is None


def test_a_string_is_the_url_in_wgs84():
    t = config_from_dict({"console": {"tiles": "http://gis.bureau.local:8080/xyz/{z}/{x}/{y}.png"}})
    t = t.console.tiles
    assert (t.url, t.crs, t.attribution) == ("http://gis.bureau.local:8080/xyz/{z}/{x}/{y}.png",
                                              "wgs84", "")
    assert t.origins() == ["http://gis.bureau.local:8080"]


def test_a_table_from_toml_with_subdomains_a_wmts_template_and_gcj02(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text(f'[console.tiles]\nurl = "{TIANDITU}"\nattribution = "天地图"\n'
                 'crs = "gcj02"\nsubdomains = "01234567"\nmin_zoom = 3\nmax_zoom = 18\n',
                 encoding="utf-8")
    t = load_config(p).console.tiles
    assert (t.crs, t.subdomains, t.min_zoom, t.max_zoom) == ("gcj02", "01234567", 3, 18)
    assert t.origins() == [f"https://t{k}.tianditu.gov.cn" for k in range(8)]
    assert t.page()["url"] == TIANDITU and t.page()["attribution"] == "天地图"


@pytest.mark.parametrize("tiles, key, words", [
    ({"url": "https://a/{z}/{x}/{y}.png", "crs": "bd09"}, "console.tiles.crs", "gcj02"),
    ("ftp://gis/{z}/{x}/{y}", "console.tiles.url", "http"),
    ("/tiles/{z}/{x}/{y}.png", "console.tiles.url", "http"),
    ("https://gis/{z}/{x}.png", "console.tiles.url", "{y}"),
    ("https://gis/{z}/{x}/{y}.png?{layer}", "console.tiles.url", "{layer}"),
    ("https://gis/{z}/{x}/{y}.png; script-src *", "console.tiles.url", "semicolons"),
    ("https://gis/{s}/{z}/{x}/{y}.png", "console.tiles.url", "host"),
    ({"url": "https://{s}.gis/{z}/{x}/{y}.png", "subdomains": ""}, "console.tiles.subdomains",
     "letters"),
    ({"url": "https://gis/{z}/{x}/{y}.png", "min_zoom": 12, "max_zoom": 8},
     "console.tiles.max_zoom", "min_zoom"),
    ({"url": "https://gis/{z}/{x}/{y}.png", "max_zoom": 25}, "console.tiles.max_zoom", "22"),
    ({"url": "https://gis/{z}/{x}/{y}.png", "max_zoom": 1.5}, "console.tiles.max_zoom", "whole"),
    ({"url": "https://gis/{z}/{x}/{y}.png", "projection": "x"}, "console.tiles.projection",
     "unknown key"),
    (5, "console.tiles", "table"),
])
def test_bad_values_are_refused_naming_the_key(tiles, key, words):
    with pytest.raises(ConfigError) as err:
        config_from_dict({"console": {"tiles": tiles}}, source="emfence.toml")
    assert err.value.key == key
    assert words in str(err.value) and "emfence.toml" in str(err.value)


def test_the_documented_examples_load():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text(
        encoding="utf-8")
    blocks = [b for b in re.findall(r"```toml\n(.*?)```", doc, re.DOTALL) if "tiles" in b]
    assert len(blocks) == 4
    crs = [config_from_dict(tomllib.loads(b)).console.tiles.crs for b in blocks]
    assert crs == ["wgs84", "wgs84", "gcj02", "wgs84"]
