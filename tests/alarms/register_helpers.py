"""Builders for the register tests: zones, subjects, and a look at every register table."""

from __future__ import annotations

from typing import Any

DAY = 86_400_000
T0 = 1_780_000_000_000  # 2026-05-28, epoch ms
REGISTER_TABLES = ("reg_changes", "reg_subjects", "reg_subject_versions", "reg_devices",
                   "reg_device_issues", "reg_zones", "reg_assignments", "reg_leaves",
                   "reg_curfews", "reg_suspensions", "reg_contacts", "reg_protected_versions",
                   "audit")
# a point in 卧龙区 (411303), WGS-84
HOME = (112.53, 33.00)


def circle(zone_id: str, lon: float = HOME[0], lat: float = HOME[1], radius_m: float = 300,
           name: str = "受害人住所", coord_sys: str = "wgs84") -> dict[str, Any]:
    return {"type": "Feature", "properties": {"zone_id": zone_id, "name": name,
                                              "radius_m": radius_m, "coord_sys": coord_sys},
            "geometry": {"type": "Point", "coordinates": [lon, lat]}}


def square(zone_id: str, lon: float = HOME[0], lat: float = HOME[1], d: float = 0.01,
           name: str = "学校", coord_sys: str = "wgs84", ccw: bool = True) -> dict[str, Any]:
    ring = [[lon - d, lat - d], [lon + d, lat - d], [lon + d, lat + d], [lon - d, lat + d],
            [lon - d, lat - d]]
    if not ccw:
        ring.reverse()
    return {"type": "Feature", "properties": {"zone_id": zone_id, "name": name,
                                              "coord_sys": coord_sys},
            "geometry": {"type": "Polygon", "coordinates": [ring]}}


def subject(sid: str, *, devices: tuple[str, ...] = (), region: str = "411303",
            inclusion: tuple[str, ...] = ("411303",), exclusion: tuple[str, ...] = (),
            name: str = "张三", level: str = "strict", **extra: Any) -> dict[str, Any]:
    return {"subject_id": sid, "name": name, "region": region, "level": level,
            "devices": [{"device_id": d, "kind": "phone" if d.startswith("P") else "bracelet"}
                        for d in devices],
            "inclusion": list(inclusion), "exclusion": list(exclusion), **extra}


def table_counts(store) -> dict[str, int]:
    """Rows in every register table and the audit log."""
    with store._db.tx("test counts", write=False) as cur:
        return {t: int(cur.execute(f"SELECT COUNT(*) FROM {t}").scalar())
                for t in REGISTER_TABLES}


def setup_zones(reg, now_ms: int = T0) -> None:
    """The counties 411303 (卧龙区), 411302 (宛城区), 411321 (南召县) and a victim's home."""
    for code in ("411303", "411302", "411321"):
        reg.import_adcode(code, actor="admin", now_ms=now_ms)
    reg.create_zone(circle("victim-1"), actor="admin", now_ms=now_ms)
