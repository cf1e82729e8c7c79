// hangar-operation-tag: exactly one tag per operation, declared in the document's `tags`.
// The CLI groups commands by it (`hangar api-keys list`), so it must be one known name.
import { allOperations, isObject, label } from './lib/openapi.js';

export default (doc, _options, context) => {
  const results = [];
  const declared = new Set((Array.isArray(doc.tags) ? doc.tags : []).filter(isObject).map((tag) => tag.name));
  for (const { method, route, op, path } of allOperations(doc, context.path)) {
    const tags = Array.isArray(op.tags) ? op.tags : [];
    if (tags.length !== 1) {
      results.push({ message: `${label(method, route)} must have exactly one tag (has ${tags.length}).`, path: tags.length ? [...path, 'tags'] : path });
      continue;
    }
    if (!declared.has(tags[0])) {
      results.push({ message: `${label(method, route)}: tag "${tags[0]}" is not declared in the top-level \`tags\`.`, path: [...path, 'tags', 0] });
    }
  }
  return results;
};
