"""Build hook for hatchling (not part of the runtime: the wheel never contains it).

The repo keeps one runtime module, octoai_lite.py. The wheel carries it as a
package, octoai_lite/__init__.py beside an empty py.typed (PEP 561: a
single-module distribution cannot be marked typed); pyproject.toml maps those
two files. This hook adds what cannot be a mapping of a file in the repo:

- wheel: octoai_lite/__main__.py, three lines that call main(), so that
  `python -m octoai_lite` works on the installed package;
- editable (`pip install -e .`): a .pth file naming the checkout, so that
  `import octoai_lite` finds the repo's octoai_lite.py itself, not a copy.
"""

import os
import shutil
import tempfile

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

MAIN = "import sys\n\nfrom octoai_lite import main\n\nsys.exit(main())\n"


class OctoAILiteLayout(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version, build_data):
        if self.target_name != "wheel":
            return
        self._folder = tempfile.mkdtemp(prefix="octoai_lite-build-")
        if version == "editable":
            path = os.path.join(self._folder, "octoai_lite.pth")
            with open(path, "w", encoding="utf-8") as file:
                file.write(os.path.abspath(self.root) + "\n")
            build_data["force_include_editable"][path] = "octoai_lite.pth"
        else:
            path = os.path.join(self._folder, "__main__.py")
            with open(path, "w", encoding="utf-8") as file:
                file.write(MAIN)
            build_data["force_include"][path] = "octoai_lite/__main__.py"

    def finalize(self, version, build_data, artifact_path):
        folder = getattr(self, "_folder", None)
        if folder:
            shutil.rmtree(folder, ignore_errors=True)
