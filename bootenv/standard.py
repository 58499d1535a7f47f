"""The standard flavor: a Debian distribution kernel + the frozen agent."""

from __future__ import annotations

from pathlib import Path

from bootenv import modules, tools
from bootenv.build import BuildResult, BuildSpec, build
from bootenv.freeze import freeze_agent
from kernels.tree import KernelTree, list_kernels
from kernels.tree import load as load_kernel
from sysclone.errors import ConfigError
from sysclone.paths import StateRoot
from sysclone.ui import Ui


def find_kernel(state: StateRoot, flavor: str, fetch: bool = True, ui: Ui | None = None
                ) -> KernelTree:
    """The newest fetched kernel of `flavor`, fetched when there is none."""
    have = [k for k in list_kernels(state.kernels) if k.flavor == flavor]
    if have:
        return sorted(have, key=lambda k: k.kver)[-1]
    if not fetch:
        raise ConfigError(f"no kernel of flavor {flavor} fetched yet",
                          hint=f"sysclone kernel fetch --flavor {flavor}")
    from kernels.standard import fetch_standard

    if ui:
        with ui.progress(f"linux-image-{flavor}", None) as update:
            return fetch_standard(state, flavor=flavor, progress=update)
    return fetch_standard(state, flavor=flavor)


def build_bootenv(state: StateRoot, ui: Ui, *, output: Path | None = None,
                  kernel: str | None = None, flavor: str = "cloud-amd64",
                  module_groups: tuple[str, ...] | None = None,
                  extra_modules: tuple[str, ...] | None = None,
                  tool_groups: tuple[str, ...] | None = None, compression: str = "zstd",
                  local_cfg: Path | None = None, use_cache: bool = True,
                  packing: str = "auto", init_script: str | None = None) -> BuildResult:
    tree = load_kernel(Path(kernel)) if kernel else find_kernel(state, flavor, ui=ui)
    out = output or state.bootenvs / "standard"
    with ui.step("freeze the agent"):
        agent = freeze_agent(state, use_cache=use_cache)
    spec = BuildSpec(
        kernel_image=tree.vmlinuz, modules_dir=tree.modules_dir, kver=tree.kver,
        flavor="standard",
        module_groups=modules.groups_for(module_groups or modules.STANDARD_GROUPS,
                                         tool_groups or tools.DEFAULT_TOOLS),
        extra_modules=extra_modules or (), tool_groups=tool_groups or tools.DEFAULT_TOOLS,
        compression=compression, local_cfg=local_cfg, packing=packing, init_script=init_script,
        kernel_info={"flavor": tree.flavor, "package": tree.package.name,
                     "package_version": tree.package.version,
                     "package_sha256": tree.package.sha256},
    )
    with ui.step(f"build the boot environment for {tree.kver} in {out}") as update:
        return build(spec, agent, out, step=update)
