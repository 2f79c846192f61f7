// Prints one section of native/sources.json, space-separated, for binding.gyp's <!@(...).
const fs = require('fs');
const path = require('path');
const section = process.argv[2];
const lists = JSON.parse(fs.readFileSync(path.join(__dirname, 'sources.json'), 'utf8'));
if (!Array.isArray(lists[section])) {
  console.error(`native/sources.json has no section "${section}"`);
  process.exit(1);
}
process.stdout.write(lists[section].join(' '));
