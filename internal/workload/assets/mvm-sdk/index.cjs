const h = (name) => (...args) => ({ helper: name, args });
const app = () => (fn) => fn;
const mvm = { app };
for (const n of ["local_path", "localPath", "nix_packages", "nixPackages", "debian_packages", "debianPackages", "python_image", "pythonImage", "node_image", "nodeImage", "oci_image", "ociImage", "template", "resources", "network", "secret", "entrypoint", "entrypoint_function", "entrypointFunction", "hooks"]) mvm[n] = h(n);
module.exports = { ...mvm, mvm, default: mvm };
