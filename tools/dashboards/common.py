"""What the four dashboards share, on grafana-foundation-sdk's typed builders.

The panel factories (``stat``, ``timeseries_panel``, ``table_panel``, ``merged_table_panel``, ...) take
what a panel says (title, queries, unit, thresholds, mappings, size) and add the house style (reducer,
legend, tooltip, draw style) once; a merged table is a list of ``Column`` specs. ``Board`` numbers the
panels and lays them out left to right in rows of 24 grid units: the SDK's own placement wraps only after
a line is full, so a panel could run past the right edge. ``dashboard()`` adds what the SDK does not
model (grafana.com's ``__inputs`` / ``__requires``) after the build.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any, TypedDict, Unpack

from grafana_foundation_sdk.builders import bargauge, heatmap, prometheus, statetimeline, table, timeseries
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import stat as statb
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import heatmap as hm
from grafana_foundation_sdk.models import prometheus as pm

Json = dict[str, Any]
DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
Panel = statb.Panel | timeseries.Panel | table.Panel | statetimeline.Panel | heatmap.Panel | bargauge.Panel

# Every /metrics query: the job, where it probes from, which instance; round-trip probes also the probe.
S = 'job=~"$job", instance=~"$instance", vantage=~"$vantage"'
RT = S + ', probe=~"$probe"'


# ---- queries, thresholds, mappings ------------------------------------------------------------------


def target(
    expr: str, legend: str = "", ref: str = "A", *, instant: bool = False, fmt: str = ""
) -> prometheus.Dataquery:
    """One PromQL query in code mode; ``fmt`` is "table" or "heatmap" where the panel needs frames."""
    q = (
        prometheus.Dataquery()
        .datasource(DS)
        .editor_mode(pm.QueryEditorMode.CODE)
        .expr(expr)
        .legend_format(legend or "__auto")
        .ref_id(ref)
    )
    q = q.instant() if instant else q.range()
    if fmt:
        q = q.format(pm.PromQueryFormat(fmt))
    return q


def table_target(expr: str, ref: str = "A") -> prometheus.Dataquery:
    """An instant query as table rows: one column of a merged table."""
    return target(expr, "", ref, instant=True, fmt="table")


def thresholds(*steps: tuple[float | None, str]) -> db.ThresholdsConfig:
    return db.ThresholdsConfig().steps([dm.Threshold(value=v, color=c) for v, c in steps])


def value_map(*items: tuple[str, str, str]) -> list[dm.ValueMapping]:
    """(value, text, color) triples as one Grafana value mapping."""
    return [
        dm.ValueMap(
            options={v: dm.ValueMappingResult(text=t, color=c, index=i) for i, (v, t, c) in enumerate(items)}
        )
    ]


OK_FAIL = value_map(("1", "OK", "green"), ("0", "FAILING", "red"))
YES_NO_GOOD = value_map(("1", "yes", "green"), ("0", "NO", "red"))
YES_NO_BAD = value_map(("1", "YES", "red"), ("0", "no", "green"))
DAYS_THRESHOLDS = thresholds((None, "dark-red"), (0, "red"), (7, "orange"), (21, "green"))
UPTIME_THRESHOLDS = thresholds((None, "red"), (0.99, "orange"), (0.999, "green"))
FIXED_TEXT = db.FieldColor().mode(dm.FieldColorModeId.FIXED).fixed_color("text")
BY_THRESHOLDS = db.FieldColor().mode(dm.FieldColorModeId.THRESHOLDS)


def fixed(color: str) -> Json:
    """A fixed series colour, as an override property value."""
    return {"mode": "fixed", "fixedColor": color}


# ---- overrides and transformations ------------------------------------------------------------------


@dataclass(frozen=True)
class Override:
    """Field config for the fields matched by name (or by regexp): Grafana property ids and values."""

    match: str
    props: tuple[tuple[str, object], ...]
    regexp: bool = False


def column_override(name: str, *, regexp: bool = False, **props: object) -> Override:
    """``cells=`` is the table cell display (``custom.cellOptions``); ``custom__x=`` is ``custom.x``."""
    return override(name, props, regexp=regexp)


def override(name: str, props: dict[str, object], *, regexp: bool = False) -> Override:
    ids = {"cells": "custom.cellOptions"}
    return Override(name, tuple((ids.get(k, k.replace("__", ".")), v) for k, v in props.items()), regexp)


def series_color(regexp: str, color: str) -> Override:
    return column_override(regexp, regexp=True, color=fixed(color))


COLOR_TEXT = {"type": "color-text"}
COLOR_BACKGROUND = {"type": "color-background"}
COLOR_BACKGROUND_BASIC = {"type": "color-background", "mode": "basic"}


@dataclass(frozen=True)
class Column:
    """One column of a merged table: its name, its instant query, its field overrides."""

    name: str
    expr: str
    props: dict[str, object] = dataclass_field(default_factory=dict)


def col(name: str, expr: str, **props: object) -> Column:
    return Column(name, expr, props)


def ok_fail(name: str, expr: str) -> Column:
    """A success column (1 OK, 0 FAILING) on a green or red background."""
    return col(name, expr, mappings=OK_FAIL, cells=COLOR_BACKGROUND, thresholds=thresholds((None, "red")))


def yes_no(name: str, expr: str, *, good: bool = True) -> Column:
    """A 0/1 column in green and red text: "yes"/"NO" where 1 is good, "YES"/"no" where 1 is bad."""
    return col(name, expr, mappings=YES_NO_GOOD if good else YES_NO_BAD, cells=COLOR_TEXT)


def organize(exclude: Sequence[str], rename: dict[str, str] | None = None, index: Json | None = None) -> Json:
    return {
        "excludeByName": dict.fromkeys(exclude, True),
        "renameByName": rename or {},
        "indexByName": index or {},
    }


def merged_table(
    columns: dict[str, str], hide: tuple[str, ...] = ("Time",)
) -> list[dm.DataTransformerConfig]:
    """Instant queries (one per column, refIds A, B, ...) merged into one row per label set."""
    rename = {f"Value #{ref}": name for ref, name in columns.items()}
    if len(columns) == 1:  # with a single query Grafana names the column "Value", not "Value #A"
        rename["Value"] = next(iter(columns.values()))
    return [
        dm.DataTransformerConfig(id_val="merge", options={}),
        dm.DataTransformerConfig(id_val="organize", options=organize(hide, rename)),
    ]


def organized(exclude: Sequence[str], **kwargs: Any) -> list[dm.DataTransformerConfig]:
    return [dm.DataTransformerConfig(id_val="organize", options=organize(exclude, **kwargs))]


# ---- panels -----------------------------------------------------------------------------------------


class FieldArgs(TypedDict, total=False):
    """The field defaults every panel kind takes."""

    unit: str
    decimals: float
    min: float
    max: float
    thresholds: db.ThresholdsConfig
    mappings: list[dm.ValueMapping]
    color: db.FieldColor


def _common(
    panel: Panel,
    title: str,
    targets: Sequence[prometheus.Dataquery],
    description: str,
    field: FieldArgs,
    overrides: Sequence[Override],
    transformations: Sequence[dm.DataTransformerConfig],
    interval: str,
    size: tuple[int, int],
) -> None:
    panel.title(title).description(description).datasource(DS).targets(list(targets))
    panel.grid_pos(dm.GridPos(w=size[0], h=size[1]))
    if "unit" in field:
        panel.unit(field["unit"])
    if "decimals" in field:
        panel.decimals(field["decimals"])
    if "min" in field:
        panel.min(field["min"])
    if "max" in field:
        panel.max(field["max"])
    if "thresholds" in field:
        panel.thresholds(field["thresholds"])
    if "mappings" in field:
        panel.mappings(field["mappings"])
    if "color" in field:
        panel.color_scheme(field["color"])
    for o in overrides:
        props = [
            dm.DynamicConfigValue(id_val=k, value=v.build() if isinstance(v, Builder) else v)
            for k, v in o.props
        ]
        if o.regexp:
            panel.override_by_regexp(o.match, props)
        else:
            panel.override_by_name(o.match, props)
    if transformations:
        panel.transformations(list(transformations))
    if interval:
        panel.interval(interval)


def stat(
    title: str,
    targets: Sequence[prometheus.Dataquery],
    *,
    size: tuple[int, int],
    description: str = "",
    text_mode: cm.BigValueTextMode = cm.BigValueTextMode.VALUE_AND_NAME,
    color_mode: cm.BigValueColorMode = cm.BigValueColorMode.BACKGROUND,
    overrides: Sequence[Override] = (),
    **field: Unpack[FieldArgs],
) -> statb.Panel:
    """The last value of each series, coloured by thresholds or mappings."""
    p = (
        statb.Panel()
        .color_mode(color_mode)
        .graph_mode(cm.BigValueGraphMode.NONE)
        .reduce_options(last_not_null())
        .text_mode(text_mode)
    )
    _common(p, title, targets, description, field, overrides, (), "", size)
    return p


def last_not_null() -> cb.ReduceDataOptions:
    """The newest non-null value of each series: what a status stat shows."""
    return cb.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False)


def timeseries_panel(
    title: str,
    targets: Sequence[prometheus.Dataquery],
    *,
    size: tuple[int, int],
    description: str = "",
    bars: bool = False,
    stack: bool = False,
    points: cm.VisibilityMode = cm.VisibilityMode.AUTO,
    overrides: Sequence[Override] = (),
    interval: str = "",
    thresholds_style: cm.GraphThresholdsStyleMode | None = None,
    **field: Unpack[FieldArgs],
) -> timeseries.Panel:
    """Lines (or stacked bars for counts per interval), legend below, tooltip with every series."""
    p = (
        timeseries.Panel()
        .draw_style(cm.GraphDrawStyle.BARS if bars else cm.GraphDrawStyle.LINE)
        .fill_opacity(60 if bars else 10)
        .line_width(1)
        .point_size(4)
        .show_points(points)
        .span_nulls(False)
        .stacking(
            cb.StackingConfig().group("A").mode(cm.StackingMode.NORMAL if stack else cm.StackingMode.NONE)
        )
        .legend(cb.VizLegendOptions().show_legend(True))
        .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING))
    )
    if thresholds_style is not None:
        p.thresholds_style(cb.GraphThresholdsStyleConfig().mode(thresholds_style))
    _common(p, title, targets, description, {"unit": "short", **field}, overrides, (), interval, size)
    return p


def table_panel(
    title: str,
    targets: Sequence[prometheus.Dataquery],
    *,
    size: tuple[int, int],
    description: str = "",
    transformations: Sequence[dm.DataTransformerConfig] = (),
    overrides: Sequence[Override] = (),
    sort_by: tuple[str, bool] | None = None,
    auto_cells: bool = False,
    **field: Unpack[FieldArgs],
) -> table.Panel:
    """A table of instant queries; ``sort_by`` is (column, descending)."""
    p = table.Panel().footer(cb.TableFooterOptions().show(False).reducer(["sum"]).fields([]))
    if sort_by:
        p.sort_by([cb.TableSortByFieldState().display_name(sort_by[0]).desc(sort_by[1])])
    if auto_cells:
        p.align(cm.FieldTextAlignment.AUTO).cell_options(cm.TableAutoCellOptions())
    _common(p, title, targets, description, field, overrides, transformations, "", size)
    return p


def uptime_columns(expr: str, *, colored: bool = True) -> list[Column]:
    """Uptime over the dashboard's range and over 30 days: ``expr`` with ``{range}`` for the window."""
    cells = {"cells": COLOR_TEXT, "thresholds": UPTIME_THRESHOLDS} if colored else {}
    return [
        col(f"uptime ({name})", expr.replace("{range}", window), unit="percentunit", decimals=d, **cells)
        for name, window, d in (("range", "$__range", 2), ("30 d", "30d", 3))
    ]


def merged_table_panel(
    title: str,
    columns: Sequence[Column],
    *,
    size: tuple[int, int],
    description: str = "",
    overrides: Sequence[Override] = (),
    sort_by: tuple[str, bool] | None = None,
    auto_cells: bool = False,
    **field: Unpack[FieldArgs],
) -> table.Panel:
    """One instant query per column (refIds A, B, ...), merged into one row per label set."""
    refs = [chr(ord("A") + i) for i in range(len(columns))]
    return table_panel(
        title,
        [table_target(c.expr, ref) for ref, c in zip(refs, columns, strict=True)],
        description=description,
        transformations=merged_table({ref: c.name for ref, c in zip(refs, columns, strict=True)}),
        overrides=[*(override(c.name, c.props) for c in columns if c.props), *overrides],
        size=size,
        sort_by=sort_by,
        auto_cells=auto_cells,
        **field,
    )


def status_timeline(
    title: str, targets: Sequence[prometheus.Dataquery], *, size: tuple[int, int], description: str = ""
) -> statetimeline.Panel:
    """Success (1) / failure (0) over time as green and red bands."""
    p = (
        statetimeline.Panel()
        .fill_opacity(80)
        .legend(cb.VizLegendOptions().show_legend(False))
        .show_value(cm.VisibilityMode.NEVER)
        .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.SINGLE).sort(cm.SortOrder.NONE))
    )
    field = FieldArgs(mappings=OK_FAIL, color=BY_THRESHOLDS, thresholds=thresholds((None, "red")))
    _common(p, title, targets, description, field, (), (), "", size)
    return p


def latency_heatmap(
    title: str,
    targets: Sequence[prometheus.Dataquery],
    *,
    size: tuple[int, int],
    description: str,
    unit: str,
    interval: str,
) -> heatmap.Panel:
    """Pre-bucketed histogram series (format heatmap) drawn as they are, not re-bucketed."""
    p = (
        heatmap.Panel()
        .calculate(False)
        .scale_distribution(cb.ScaleDistributionConfig().type(cm.ScaleDistribution.LINEAR))
        .color(
            heatmap.HeatmapColorOptions()
            .exponent(0.5)
            .mode(hm.HeatmapColorMode.SCHEME)
            .scheme("Oranges")
            .steps(64)
        )
        .rows_frame(heatmap.RowsHeatmapOptions().layout(cm.HeatmapCellLayout.AUTO))
        .show_y_histogram()
        .y_axis(heatmap.YAxisConfig().axis_placement(cm.AxisPlacement.LEFT).unit(unit))
    )
    _common(p, title, targets, description, {}, (), (), interval, size)
    return p


def bar_gauge(
    title: str,
    targets: Sequence[prometheus.Dataquery],
    *,
    size: tuple[int, int],
    description: str = "",
    **field: Unpack[FieldArgs],
) -> bargauge.Panel:
    """Horizontal gradient bars, one per series, against min / max and thresholds."""
    p = bargauge.Panel().orientation(cm.VizOrientation.HORIZONTAL)
    _common(p, title, targets, description, field, (), (), "", size)
    return p


# ---- the dashboard ----------------------------------------------------------------------------------


class Board:
    """Numbers the panels and lays them out left to right in rows of 24 grid units."""

    def __init__(self) -> None:
        self.panels: list[Panel | db.Row] = []
        self.kinds: set[str] = set()
        self.x = 0
        self.y = 0
        self.row_h = 0

    def row(self, title: str, *panels: Panel) -> None:
        """A row header, then its panels in the sizes their factories gave them (``size=``)."""
        if self.x:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        pos = dm.GridPos(h=1, w=24, x=0, y=self.y)
        self.panels.append(db.Row(title).id(len(self.panels) + 1).grid_pos(pos))
        self.y += 1
        for panel in panels:
            self._add(panel)

    def _add(self, panel: Panel) -> None:
        model = panel.build()
        assert model.grid_pos is not None, "every panel factory sets size="
        w, h = model.grid_pos.w, model.grid_pos.h
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        panel.id(len(self.panels) + 1).grid_pos(dm.GridPos(h=h, w=w, x=self.x, y=self.y))
        self.x += w
        self.row_h = max(self.row_h, h)
        self.kinds.add(model.type_val)
        self.panels.append(panel)


def dashboard(
    uid: str,
    title: str,
    description: str,
    variables: Sequence[Builder[dm.VariableModel]],
    board: Board,
    *,
    scope: Sequence[Builder[dm.VariableModel]] | None = None,
) -> Json:
    """The dashboard model from the SDK plus the grafana.com import metadata it does not model."""
    d = (
        db.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["mailcanary", "mail"])
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .time("now-24h", "now")
        .timezone("")
        .refresh("1m")
        .version(1)
        .annotation(
            db.AnnotationQuery()
            .built_in(1)
            .datasource(dm.DataSourceRef(type_val="grafana", uid="-- Grafana --"))
            .hide(True)
            .icon_color("rgba(0, 211, 255, 1)")
            .name("Annotations & Alerts")
            .type("dashboard")
        )
        .link(
            db.DashboardLink("mailcanary")
            .type(dm.DashboardLinkType.DASHBOARDS)
            .icon("external link")
            .include_vars(True)
            .keep_time(True)
            .tags(["mailcanary"])
            .tooltip("The other mailcanary dashboards")
        )
        .variables([DATASOURCE_VAR, *(SCOPE_VARS if scope is None else scope), *variables])
    )
    for p in board.panels:
        if isinstance(p, db.Row):
            d.with_row(p)
        else:
            d.with_panel(p)
    built = d.build()
    for var in built.templating.list_val or []:
        # The SDK gives every variable the interval variable's auto / auto_min / auto_count (defaults of
        # its VariableModel); @grafana/schema's VariableModel has no such keys and tsc rejects them.
        var.auto = var.auto_min = var.auto_count = None
    model: Json = json.loads(json.dumps(built, cls=JSONEncoder))
    # grafana-foundation-sdk has no __inputs / __requires (grafana.com import metadata): added here.
    return {"__inputs": INPUTS, "__requires": requires(board.kinds), **model}


# ---- variables --------------------------------------------------------------------------------------

ALL = dm.VariableOption(selected=True, text=["All"], value=["$__all"])


def variable_query(name: str, label: str, query: str, *, all_value: str = ".*") -> db.QueryVariable:
    """A multi-select label_values() variable with All = ``all_value``, refreshed on time range change."""
    return (
        db.QueryVariable(name)
        .label(label)
        .all_value(all_value)
        .current(ALL)
        .datasource(DS)
        .hide(dm.VariableHide.DONT_HIDE)
        .include_all(True)
        .multi(True)
        .options([])
        .query({"qryType": 1, "query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"})
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .regex("")
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
    )


# ${DS_PROMETHEUS} is the __inputs entry: grafana.com import asks for the data source and fills it in;
# provisioned from a file, Grafana finds no such data source and selects the default one.
DATASOURCE_VAR = (
    db.DatasourceVariable("datasource")
    .label("Data source")
    .type("prometheus")
    .current(dm.VariableOption(selected=False, text="Prometheus", value="${DS_PROMETHEUS}"))
    .hide(dm.VariableHide.DONT_HIDE)
    .regex("")
)
JOB_VAR = variable_query("job", "Job", "label_values(mailcanary_build_info, job)")
# Where the probes run from (global.vantage / --vantage); All also matches instances that set none.
VANTAGE_VAR = variable_query(
    "vantage", "Vantage", 'label_values(mailcanary_build_info{job=~"$job"}, vantage)'
)
INSTANCE_VAR = variable_query(
    "instance", "Instance", 'label_values(mailcanary_build_info{job=~"$job", vantage=~"$vantage"}, instance)'
)
SCOPE_VARS: list[Builder[dm.VariableModel]] = [JOB_VAR, VANTAGE_VAR, INSTANCE_VAR]


# ---- grafana.com import metadata --------------------------------------------------------------------
# The SDK builds the dashboard model only; ``__inputs`` (the data source prompt of an import) and
# ``__requires`` (what the import checks first) are added here, after the build.

GRAFANA_MIN_VERSION = "10.4.0"
PANEL_NAMES = {
    "stat": "Stat",
    "state-timeline": "State timeline",
    "table": "Table",
    "timeseries": "Time series",
    "bargauge": "Bar gauge",
    "heatmap": "Heatmap",
}
INPUTS = [
    {
        "name": "DS_PROMETHEUS",
        "label": "Prometheus",
        "description": "The Prometheus that scrapes mailcanary",
        "type": "datasource",
        "pluginId": "prometheus",
        "pluginName": "Prometheus",
    }
]


def requires(kinds: set[str]) -> list[Json]:
    return [
        {"type": "grafana", "id": "grafana", "name": "Grafana", "version": GRAFANA_MIN_VERSION},
        {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
        *({"type": "panel", "id": k, "name": PANEL_NAMES[k], "version": ""} for k in sorted(kinds)),
    ]
