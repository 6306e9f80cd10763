"""A run on ingested data (no simulator) reports probes only: no online-return columns, not even empty ones."""

from masklam.report.tables import METRICS, variant_table


def variant(simulated: bool, env: str = "dmc:cheetah-run") -> dict:
    def cell(method: str, nmse: list[float]) -> dict:
        return {"method": method, "mask": None, "seeds": [0, 1], **{key: [] for key in METRICS}, "nmse": nmse, "in_pool": nmse}

    runs = {"lapo": {0: cell("lapo", [0.9, 0.8])}, "masklam": {0: cell("masklam", [0.3, 0.2])}}
    return {"env": env, "simulated": simulated, "runs": runs}


def test_ingested_data_has_no_return_columns():
    table, _ = variant_table(variant(simulated=False, env="lerobot:mine"), 0)
    header = table.splitlines()[0]
    assert "return" not in header and "success" not in header and "LAPO NMSE / NMSE" in header
    masklam_row = next(line for line in table.splitlines() if line.startswith("| masklam "))
    assert masklam_row.count("|") == header.count("|") and "3.40×" in masklam_row  # 0.85 / 0.25


def test_simulated_data_keeps_them():
    header = variant_table(variant(simulated=True), 0)[0].splitlines()[0]
    assert "return / expert ↑" in header and "return / LAPO's" in header
    assert "success ↑" in variant_table(variant(simulated=True, env="metaworld:push-v3"), 0)[0].splitlines()[0]
