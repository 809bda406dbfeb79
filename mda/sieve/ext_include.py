"""mda.sieve.ext_include -- RFC 6609: include, return and global.

`include` runs another script from the user's sieve folder (:personal, the
default) or the administrator's global folder (:global); :once skips a script
already included, :optional tolerates a missing one. Each script has its own
variables; names declared with `global` (or written global.NAME) are shared.
Recursion is a runtime error; depth and count are bounded by Limits.

SECURITY: script names cannot contain "/" or start with "." so an include can
never leave its folder."""

from __future__ import annotations

from .interpreter import Context, ReturnScript, Scope, SieveSyntaxError
from .parser import REGISTRY, Checker, Node, Spec, TagSpec

REGISTRY.capability("include")


def valid_script_name(name: str) -> bool:
    return (0 < len(name) <= 128 and "/" not in name and not name.startswith(".")
            and not any(ord(c) < 0x20 or ord(c) == 0x7F for c in name))


def check_include(node: Node, checker: Checker) -> None:
    name = node.positional[0]
    if "${" not in name and not valid_script_name(name):
        raise checker.fail(node, f"{name!r} is not a valid script name")


def run_include(node: Node, ctx: Context) -> None:
    name = ctx.string(node, 0)
    location = "global" if node.tags.get("global") else "personal"
    if not valid_script_name(name):
        raise ctx.fail(f"{name!r} is not a valid script name", node)
    key = (location, name)
    if node.tags.get("once") and key in ctx.includes_done:
        return
    if key in ctx.include_stack:
        raise ctx.fail(f"include loop: {location} script {name!r} includes itself", node)
    if len(ctx.include_stack) >= ctx.limits.max_include_depth:
        raise ctx.fail("includes nested too deeply", node)
    ctx.includes += 1
    if ctx.includes > ctx.limits.max_includes:
        raise ctx.fail("too many includes", node)
    try:
        script = ctx.env.load_include(location, name)
    except SieveSyntaxError as e:
        raise ctx.fail(f"included script {name!r}: {e}", node) from None
    except OSError as e:
        raise ctx.fail(f"included script {name!r} cannot be read: {e.strerror}", node) from None
    if script is None:
        if node.tags.get("optional"):
            return
        raise ctx.fail(f"{location} script {name!r} not found", node)
    ctx.includes_done.add(key)
    outer = ctx.scope
    ctx.scope = Scope(script, ctx.globals)
    ctx.include_stack.append(key)
    try:
        ctx.execute(script.commands)
    except ReturnScript:
        pass
    finally:
        ctx.include_stack.pop()
        ctx.scope = outer


def run_return(node: Node, ctx: Context) -> None:
    raise ReturnScript()


def check_global(node: Node, checker: Checker) -> None:
    from .ext_variables import valid_variable_name
    if not checker.has("variables"):
        raise checker.fail(node, "global needs require \"variables\"")
    for name in node.positional[0]:
        if not valid_variable_name(name) or "." in name:
            raise checker.fail(node, f"{name!r} is not a valid variable name")


def run_global(node: Node, ctx: Context) -> None:
    ctx.scope.declared.update(n.lower() for n in node.positional[0])  # type: ignore[union-attr]


REGISTRY.command(Spec("include", "command", run_include, extension="include", positional=("string",), check=check_include,
                      tags={
                          "personal": TagSpec("personal", None, "location"),
                          "global": TagSpec("global", None, "location"),
                          "once": TagSpec("once"),
                          "optional": TagSpec("optional"),
                      }))
REGISTRY.command(Spec("return", "command", run_return, extension="include"))
REGISTRY.command(Spec("global", "command", run_global, extension="include", positional=("stringlist",), check=check_global))
