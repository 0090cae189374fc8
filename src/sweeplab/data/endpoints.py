"""The structural-analysis API the tool-calling chats target, and the ways engineers ask for each call.

Each endpoint function draws realistic arguments and one of several phrasings (synonyms, word
order, units) and returns (request text, (endpoint name, arguments)). Some arguments are not
copied from the request but implied by it (mm -> m, "downward" -> negative Z, grade -> E), so
the mapping is learnable but not a copy task.
"""

from __future__ import annotations

import random
from collections.abc import Callable

# fmt: off
# (The phrasing tables below read best packed; the formatter would nearly double the file.)

# Grade -> (family, E in GPa): the user names the grade, the call must carry the family and E.
MATERIALS = {
    "S235": ("steel", 210.0), "S275": ("steel", 210.0), "S355": ("steel", 210.0),
    "S460": ("steel", 210.0), "A992": ("steel", 200.0), "A36": ("steel", 200.0),
    "C25/30": ("concrete", 31.0), "C30/37": ("concrete", 33.0), "C35/45": ("concrete", 34.0),
    "C40/50": ("concrete", 35.0), "C50/60": ("concrete", 37.0),
    "C24": ("timber", 11.0), "GL24h": ("timber", 11.5), "GL28h": ("timber", 12.6),
}
STEEL_SECTIONS = [
    "W310x97", "W360x122", "W250x73", "W410x60", "W200x46", "W530x92", "W150x22",
    "IPE300", "IPE400", "HEA200", "HEB240", "HEA300", "SHS150x8", "CHS219x8",
]
SUPPORTS = {
    "fixed": ["fixed", "fully fixed", "clamped", "encastré"],
    "pinned": ["pinned", "hinged", "pin"],
    "roller": ["roller", "sliding", "free-to-slide"],
}
CASE_TYPES = {
    "dead": (["dead", "permanent", "self-weight"], ["DL", "G", "Dead"]),
    "live": (["live", "imposed", "occupancy"], ["LL", "Q", "Live"]),
    "wind": (["wind"], ["WX", "WY", "Wind +X"]),
    "snow": (["snow"], ["S", "Snow"]),
    "seismic": (["seismic", "earthquake"], ["EQX", "EQY"]),
}
POSITIONS = {0.0: ["at the start", "at end i", "at x = 0"], 0.25: ["at quarter span"],
             0.5: ["at midspan", "at mid-length", "in the middle"], 1.0: ["at the far end", "at end j"]}

Call = tuple[str, dict]  # (endpoint name, arguments in a fixed key order)


def num(v: float) -> str:
    """How people write numbers: 3 not 3.0, 2.5 not 2.50."""
    return f"{v:g}"


def pick(rng: random.Random, options: list[str], **fields) -> str:
    return rng.choice(options).format(**fields)


def node_id(rng: random.Random) -> int:
    return rng.randint(1, 150)


def elem_id(rng: random.Random) -> int:
    return rng.randint(1, 300)


def case_id(rng: random.Random) -> int:
    return rng.randint(1, 20)


def coord(rng: random.Random, top: int = 30) -> float:
    return rng.randint(0, top * 4) / 4  # m, on a 0.25 m grid


def length_text(rng: random.Random, v: float) -> str:
    # One in five in mm: the call is always in m, so this is a conversion to learn.
    return f"{v * 1000:.0f} mm" if rng.random() < 0.2 else f"{num(v)} m"


def force_text(rng: random.Random, kn: float) -> str:
    return f"{num(kn * 1000)} N" if rng.random() < 0.15 else f"{num(kn)} kN"  # N: a conversion to learn


def create_node(rng: random.Random) -> tuple[str, Call]:
    i, x, y, z = node_id(rng), coord(rng), coord(rng), coord(rng, 12)
    text = pick(rng, [
        "Create node {i} at ({x}, {y}, {z}) m.",
        "Add a node with id {i} at x={x} m, y={y} m, z={z} m.",
        "New joint N{i}: x {x}, y {y}, z {z} (metres).",
        "Place node #{i} at coordinates {x} / {y} / {z} m",
        "node {i} at x={x}, y={y}, z={z} please",
    ], i=i, x=num(x), y=num(y), z=num(z))
    if rng.random() < 0.2:
        x_, y_, z_ = (length_text(rng, v) for v in (x, y, z))
        text = f"Add node {i} at x = {x_}, y = {y_}, z = {z_}."
    return text, ("POST /db/node", {"id": i, "x": x, "y": y, "z": z})


def move_node(rng: random.Random) -> tuple[str, Call]:
    i, axis, v = node_id(rng), rng.choice("xyz"), coord(rng, 20)
    text = pick(rng, [
        "Move node {i} to {a} = {v}.", "Change the {a} coordinate of node {i} to {v}.",
        "Shift N{i} so that {a} is {v}.", "Set {a}={v} for node {i}.",
    ], i=i, a=axis, v=length_text(rng, v))
    return text, ("PATCH /db/node", {"id": i, axis: v})


def delete_node(rng: random.Random) -> tuple[str, Call]:
    i = node_id(rng)
    text = pick(rng, ["Delete node {i}.", "Remove joint N{i} from the model.", "Get rid of node #{i}",
                      "node {i} is not needed any more, remove it"], i=i)
    return text, ("DELETE /db/node", {"id": i})


def create_material(rng: random.Random) -> tuple[str, Call]:
    i, grade = rng.randint(1, 9), rng.choice(list(MATERIALS))
    family, e = MATERIALS[grade]
    text = pick(rng, [
        "Define material {i} as {g}.", "Add material #{i}: grade {g}.", "mat {i} = {g} {f}",
        "Create a {f} material with id {i}, grade {g}.", "Material {i} should be {g} {f} (E = {e} GPa).",
    ], i=i, g=grade, f=family, e=num(e))
    return text, ("POST /db/material", {"id": i, "grade": grade, "type": family, "E": e})


def create_section(rng: random.Random) -> tuple[str, Call]:
    i, mat = rng.randint(1, 20), rng.randint(1, 9)
    if rng.random() < 0.3:  # concrete rectangle: "300 by 500 mm" -> "R300x500"
        b, h = rng.choice([250, 300, 350, 400]), rng.choice([400, 450, 500, 600, 700])
        text = pick(rng, [
            "Section {i}: rectangular {b} x {h} mm in material {m}.",
            "Add a {b} by {h} mm rectangular section (id {i}, material {m}).",
        ], i=i, b=b, h=h, m=mat)
        return text, ("POST /db/section", {"id": i, "name": f"R{b}x{h}", "material": mat})
    name = rng.choice(STEEL_SECTIONS)
    text = pick(rng, [
        "Create section {i} as a {n} using material {m}.", "Add profile {n} as section #{i}, material {m}.",
        "sec {i} = {n} (mat {m})", "I need section {i}: {n}, made of material {m}.",
    ], i=i, n=name, m=mat)
    return text, ("POST /db/section", {"id": i, "name": name, "material": mat})


def create_beam(rng: random.Random) -> tuple[str, Call]:
    i, a, b = elem_id(rng), node_id(rng), node_id(rng)
    s, m = rng.randint(1, 20), rng.randint(1, 9)
    text = pick(rng, [
        "Connect nodes {a} and {b} with beam {i} using section {s} and material {m}.",
        "Beam B{i} from N{a} to N{b} (section {s}, material {m}).",
        "Add beam {i} spanning node {a} to node {b}; section id {s}, material id {m}.",
        "Put a beam (id {i}) between node {a} and node {b}, section {s}, mat {m}.",
    ], i=i, a=a, b=b, s=s, m=m)
    return text, ("POST /db/beam", {"id": i, "node_i": a, "node_j": b, "section": s, "material": m})


def create_column(rng: random.Random) -> tuple[str, Call]:
    i, base, top = elem_id(rng), node_id(rng), node_id(rng)
    s, m = rng.randint(1, 20), rng.randint(1, 9)
    text = pick(rng, [
        "Add column {i} from base node {b} up to node {t}, section {s}, material {m}.",
        "Column C{i}: bottom N{b}, top N{t}, sec {s}, mat {m}.",
        "Create a column with id {i} standing on node {b} and reaching node {t} (section {s}, material {m}).",
        "Put column {i} between node {t} (top) and node {b} (base) with section {s} and material {m}.",
    ], i=i, b=base, t=top, s=s, m=m)
    return text, ("POST /db/column", {"id": i, "base": base, "top": top, "section": s, "material": m})


def change_section(rng: random.Random) -> tuple[str, Call]:
    i, s = elem_id(rng), rng.randint(1, 20)
    text = pick(rng, ["Change the section of member {i} to {s}.", "Member {i} should use section {s} now.",
                      "Swap element {i} onto section #{s}.", "Set section {s} on element {i}."], i=i, s=s)
    return text, ("PATCH /db/element", {"id": i, "section": s})


def delete_element(rng: random.Random) -> tuple[str, Call]:
    i = elem_id(rng)
    text = pick(rng, ["Delete member {i}.", "Remove element {i}.", "Take beam {i} out of the model.",
                      "Drop column {i}."], i=i)
    return text, ("DELETE /db/element", {"id": i})


def add_release(rng: random.Random) -> tuple[str, Call]:
    i, end = elem_id(rng), rng.choice(["i", "j"])
    words = {"i": ["start", "first end", "i-end"], "j": ["far end", "second end", "j-end"]}[end]
    text = pick(rng, ["Release the moment at the {w} of member {i}.", "Pin the {w} of beam {i}.",
                      "Put a hinge at the {w} of element {i}."], i=i, w=rng.choice(words))
    return text, ("POST /db/release", {"element": i, "end": end})


def add_support(rng: random.Random) -> tuple[str, Call]:
    n, kind = node_id(rng), rng.choice(list(SUPPORTS))
    text = pick(rng, ["Make node {n} {w}.", "Add a {w} support at node {n}.", "Node {n} is {w}.",
                      "Support N{n}: {w}."], n=n, w=rng.choice(SUPPORTS[kind]))
    if kind == "fixed" and rng.random() < 0.25:
        text = f"Restrain all six degrees of freedom at node {n}."
    return text, ("POST /db/support", {"node": n, "type": kind})


def create_case(rng: random.Random) -> tuple[str, Call]:
    i, kind = case_id(rng), rng.choice(list(CASE_TYPES))
    words, names = CASE_TYPES[kind]
    name = rng.choice(names)
    text = pick(rng, ['Create load case {i} called "{n}" for {w} loads.',
                      'New {w} load case {i}, name "{n}".',
                      'Add a load case (id {i}) named "{n}"; it holds {w} load.'],
                i=i, n=name, w=rng.choice(words))
    return text, ("POST /db/load_case", {"id": i, "name": name, "type": kind})


def delete_case(rng: random.Random) -> tuple[str, Call]:
    i = case_id(rng)
    text = pick(rng, ["Delete load case {i}.", "Remove case {i} and its loads.", "Drop load case #{i}.",
                      "Load case {i} is obsolete, delete it.", "Get rid of LC{i}."], i=i)
    return text, ("DELETE /db/load_case", {"id": i})


def point_load(rng: random.Random, case: int | None = None) -> tuple[str, Call]:
    n, c = node_id(rng), case or case_id(rng)
    p = rng.choice([2.5, 5, 7.5, 10, 12, 15, 20, 25, 30, 40, 50, 75, 100, 120, 150, 200]) * 1.0
    where = "in this case" if case else f"in load case {c}"
    args = {"case": c, "node": n, "fx": 0.0, "fy": 0.0, "fz": 0.0}
    style = rng.random()
    if style < 0.5:  # gravity: "downward" means negative global Z
        args["fz"] = -p
        text = pick(rng, ["Apply a {p} downward point load at node {n} {w}.",
                          "Node {n} carries {p} of gravity load {w}.",
                          "Put {p} pointing down on N{n} {w}."], p=force_text(rng, p), n=n, w=where)
    elif style < 0.8:  # one horizontal component with a sign
        axis, sign = rng.choice("xy"), rng.choice([1, -1])
        args["f" + axis] = sign * p
        text = pick(rng, ["Apply a horizontal {p} load in {s}{a} at node {n} {w}.",
                          "Push node {n} with {p} along {s}{a} {w}."],
                    p=force_text(rng, p), s="+" if sign > 0 else "-", a=axis, n=n, w=where)
    else:  # components given explicitly
        args["fx"], args["fz"] = rng.choice([5.0, 10.0, -5.0, -10.0]), -p
        text = f"At node {n} {where}: Fx = {num(args['fx'])} kN, Fz = {num(-p)} kN."
    return text, ("POST /db/load/point", args)


def line_load(rng: random.Random, case: int | None = None) -> tuple[str, Call]:
    e, c = elem_id(rng), case or case_id(rng)
    q = rng.choice([1.5, 2, 2.5, 3, 4.5, 5, 6, 8, 10, 12.5, 15, 20, 25]) * 1.0
    where = "in this case" if case else f"in case {c}"
    if rng.random() < 0.7:
        text = pick(rng, ["Add a uniform load of {q} downward on beam {e} {w}.",
                          "UDL {q} (gravity) on member {e}, {w}.",
                          "Beam {e} takes {q} distributed, pointing down, {w}."],
                    q=f"{num(q)} kN/m", e=e, w=where)
        return text, ("POST /db/load/distributed", {"case": c, "element": e, "direction": "Z", "q": -q})
    axis = rng.choice("XY")
    text = pick(rng, ["Add a lateral UDL of {q} in global {a} on member {e} {w}.",
                      "Wind pressure line load {q} along {a} on element {e}, {w}."],
                q=f"{num(q)} kN/m", a=axis, e=e, w=where)
    return text, ("POST /db/load/distributed", {"case": c, "element": e, "direction": axis, "q": q})


def create_combination(rng: random.Random) -> tuple[str, Call]:
    i = rng.randint(1, 9)
    if rng.random() < 0.5:
        name, factors = f"ULS{i}", {1: 1.35, rng.randint(2, 6): 1.5}
    else:
        name, factors = f"SLS{i}", {1: 1.0, rng.randint(2, 6): rng.choice([1.0, 0.5, 0.7])}
    terms = [f"{num(f)} x case {c}" for c, f in factors.items()]
    text = pick(rng, ["Create combination {i} \"{n}\" = {t}.", "Load combo {i} named {n}: {t}.",
                      "Add a {n} combination (id {i}) with {t}."], i=i, n=name, t=" + ".join(terms))
    # JSON object keys are strings; insertion order (case 1 first) is kept.
    args = {"id": i, "name": name, "factors": {str(c): f for c, f in factors.items()}}
    return text, ("POST /db/combination", args)


def run_analysis(rng: random.Random, combo: int | None = None) -> tuple[str, Call]:
    c = combo or rng.randint(1, 9)
    target = "it" if combo else f"combination {c}"
    kind = rng.choice(["linear_static", "linear_static", "p_delta", "buckling", "modal"])
    if kind == "modal":
        m = rng.choice([3, 4, 6, 8, 10, 12])
        text = pick(rng, ["Compute the first {m} mode shapes.", "Run a modal analysis with {m} modes.",
                          "Eigenvalue analysis, {m} modes please."], m=m)
        return text, ("POST /analysis/run", {"type": "modal", "modes": m})
    text = {
        "linear_static": ["Run a linear static analysis for {t}.", "Solve {t} (first order).",
                          "Analyse {t}."],
        "p_delta": ["Do a second-order P-Delta run for {t}.", "Run P-delta on {t}."],
        "buckling": ["Run a buckling analysis of {t}.", "Find the critical buckling factor for {t}."],
    }[kind]
    return pick(rng, text, t=target), ("POST /analysis/run", {"type": kind, "combination": c})


def get_result(rng: random.Random, combo: int | None = None) -> tuple[str, Call]:
    c = combo or rng.randint(1, 9)
    # After "run combination 3", "reactions at node 4?" means combination 3.
    phrases = [f" under combination {c}", f" for combo {c}", f" in combination {c}"]
    under = "" if combo else rng.choice(phrases)
    kind = rng.choice(["displacements", "reactions", "member_forces"])
    if kind == "displacements":
        n = node_id(rng)
        text = pick(rng, ["How far does node {n} move{u}?", "Show the displacements of node {n}{u}.",
                          "Deflection at N{n}{u}?"], n=n, u=under)
        return text, ("GET /results/displacements", {"node": n, "combination": c})
    if kind == "reactions":
        n = node_id(rng)
        text = pick(rng, ["What are the support reactions at node {n}{u}?", "Reactions at N{n}{u}.",
                          "Give me the reaction forces at support {n}{u}."], n=n, u=under)
        return text, ("GET /results/reactions", {"node": n, "combination": c})
    e, pos = elem_id(rng), rng.choice(list(POSITIONS))
    text = pick(rng, ["Internal forces of member {e} {p}{u}.",
                      "What is the bending moment in beam {e} {p}{u}?",
                      "Show N, V and M for element {e} {p}{u}."], e=e, p=rng.choice(POSITIONS[pos]), u=under)
    return text, ("GET /results/member_forces", {"element": e, "combination": c, "position": pos})


def get_mode(rng: random.Random) -> tuple[str, Call]:
    m = rng.randint(1, 20)
    quantity, texts = rng.choice([
        ("frequency", ["What is the natural frequency of mode {m}?", "Frequency of mode {m}?",
                       "How many Hz is eigenmode {m}?"]),
        ("period", ["What is the period of mode {m}?", "Give me T for mode {m}."]),
        ("shape", ["Show mode shape {m}.", "Plot eigenmode {m}.", "What does mode {m} look like?"]),
        ("participation", ["Mass participation of mode {m}?", "How much mass does mode {m} activate?"]),
    ])
    return pick(rng, texts, m=m), ("GET /results/modes", {"mode": m, "quantity": quantity})


def list_elements(rng: random.Random) -> tuple[str, Call]:
    s, kind = rng.randint(1, 20), rng.choice(["any", "beam", "column"])
    noun = {"any": rng.choice(["members", "elements"]), "beam": "beams", "column": "columns"}[kind]
    text = pick(rng, ["Which {k} use section {s}?", "List all {k} with section {s}.",
                      "Show every one of the {k} assigned to section #{s}."], s=s, k=noun)
    return text, ("GET /db/elements", {"section": s, "type": kind})


def export_report(rng: random.Random) -> tuple[str, Call]:
    if rng.random() < 0.15:  # the model itself, not results
        text = pick(rng, ["Export the model to IFC.", "Save the geometry as an IFC file.",
                          "I need an IFC export."])
        return text, ("POST /export/report", {"format": "ifc"})
    fmt, words = rng.choice([
        ("pdf", "a PDF report"), ("xlsx", "an Excel sheet"), ("pdf", "a calculation report"),
        ("xlsx", "a spreadsheet"), ("csv", "CSV tables"),
    ])
    c = rng.randint(1, 9)
    text = pick(rng, ["Export the results of combination {c} as {w}.", "Generate {w} for combo {c}.",
                      "I need {w} of combination {c}."], w=words, c=c)
    return text, ("POST /export/report", {"format": fmt, "combination": c})


ENDPOINTS: list[Callable[[random.Random], tuple[str, Call]]] = [
    create_node, move_node, delete_node, create_material, create_section, create_beam, create_column,
    change_section, delete_element, add_release, add_support, create_case, delete_case, point_load,
    line_load, create_combination, run_analysis, get_result, get_mode, list_elements, export_report,
]


def follow_up(rng: random.Random, first: Call) -> tuple[str, Call] | None:
    """A second turn that only makes sense with the first ("it", "this case"): context must be read."""
    name, args = first
    if name == "POST /db/node":
        kind = rng.choice(list(SUPPORTS))
        text = pick(rng, ["Now make it {w}.", "Give that node a {w} support."], w=rng.choice(SUPPORTS[kind]))
        return text, ("POST /db/support", {"node": args["id"], "type": kind})
    if name == "POST /db/load_case":
        return (point_load if rng.random() < 0.5 else line_load)(rng, case=args["id"])
    if name == "POST /db/combination":
        return run_analysis(rng, combo=args["id"])
    if name == "POST /analysis/run" and "combination" in args:
        return get_result(rng, combo=args["combination"])
    return None
