#!/usr/bin/env node
// The `zephyr-native` command. It lives outside dist/ because its executable bit must come from
// git: tsc writes dist/ without one, and `npx zephyr-native` run from a checkout reuses npx's
// cached link to the folder without re-applying it, so a compiled entry point fails with
// "Permission denied" on every fresh clone after the first.
import '../dist/lib/cli/main.js';
