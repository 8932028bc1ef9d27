// Guest-side stand-in for the mvm-sdk declaration helpers: at run time
// mvm.app({...})(fn) returns fn unchanged and the helpers are inert.
const h = (name) => (...args) => ({ helper: name, args });
export const app = () => (fn) => fn;
export const local_path = h("local_path"), localPath = local_path, nix_packages = h("nix_packages"),
  nixPackages = nix_packages, debian_packages = h("debian_packages"), debianPackages = debian_packages,
  python_image = h("python_image"), pythonImage = python_image, node_image = h("node_image"), nodeImage = node_image,
  oci_image = h("oci_image"), ociImage = oci_image, template = h("template"), resources = h("resources"), network = h("network"), secret = h("secret"),
  entrypoint = h("entrypoint"), entrypoint_function = h("entrypoint_function"), entrypointFunction = entrypoint_function,
  hooks = h("hooks");
export const mvm = { app, local_path, localPath, nix_packages, nixPackages, debian_packages, debianPackages, python_image, pythonImage, node_image, nodeImage, oci_image, ociImage, template, resources, network, secret, entrypoint, entrypoint_function, entrypointFunction, hooks };
export default mvm;
