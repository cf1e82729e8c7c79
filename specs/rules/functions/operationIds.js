// hangar-operation-id: every operation has an operationId, camelCase, unique in the document.
// The generated routing, SDK and CLI are keyed by it, and handlers are named after it.
import { allOperations, label } from './lib/openapi.js';

const CAMEL_CASE = /^[a-z][a-z0-9]*([A-Z][a-z0-9]*)*$/;

export default (doc, _options, context) => {
  const results = [];
  const seen = new Map();
  for (const { method, route, op, path } of allOperations(doc, context.path)) {
    const id = op.operationId;
    if (typeof id !== 'string' || id === '') {
      results.push({ message: `${label(method, route)} has no operationId.`, path });
      continue;
    }
    if (!CAMEL_CASE.test(id)) {
      results.push({ message: `operationId "${id}" is not camelCase (like "createApiKey").`, path: [...path, 'operationId'] });
    }
    if (seen.has(id)) {
      results.push({ message: `operationId "${id}" is already used by ${seen.get(id)}.`, path: [...path, 'operationId'] });
    } else {
      seen.set(id, label(method, route));
    }
  }
  return results;
};
