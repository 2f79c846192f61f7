/** zephyr-native's public library API: what a Node service imports. */
export { loadNative, type AddonInfo, type Device, type NativeAddon } from './native.js';
export { UsageError, ZnError } from './errors.js';
export { VERSION } from './version.js';
