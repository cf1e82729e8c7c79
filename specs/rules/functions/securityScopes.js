// hangar-security-scopes: each security requirement (document-wide or per operation) names
// a scheme declared under components.securitySchemes, and every scope it lists is declared
// in that scheme: `flows.*.scopes` for oauth2, `x-scopes` for Hangar's bearer API keys.
// A typo in a scope would otherwise make an operation unreachable for every real key.
import { allOperations, isObject, label } from './lib/openapi.js';

function declaredScopes(scheme) {
  const scopes = new Set(isObject(scheme['x-scopes']) ? Object.keys(scheme['x-scopes']) : []);
  if (isObject(scheme.flows)) {
    for (const flow of Object.values(scheme.flows)) {
      if (isObject(flow) && isObject(flow.scopes)) Object.keys(flow.scopes).forEach((s) => scopes.add(s));
    }
  }
  return scopes;
}

function check(requirements, where, path, schemes, results) {
  if (!Array.isArray(requirements)) return;
  requirements.forEach((requirement, i) => {
    if (!isObject(requirement)) return;
    for (const [name, scopes] of Object.entries(requirement)) {
      const scheme = schemes[name];
      if (!isObject(scheme)) {
        results.push({ message: `${where}: security scheme "${name}" is not declared in components.securitySchemes.`, path: [...path, i, name] });
        continue;
      }
      const declared = declaredScopes(scheme);
      (Array.isArray(scopes) ? scopes : []).forEach((scope, j) => {
        if (!declared.has(scope)) {
          results.push({ message: `${where}: scope "${scope}" is not declared in the "${name}" scheme's x-scopes.`, path: [...path, i, name, j] });
        }
      });
    }
  });
}

export default (doc, _options, context) => {
  const results = [];
  const schemes = isObject(doc.components) && isObject(doc.components.securitySchemes) ? doc.components.securitySchemes : {};
  check(doc.security, 'document', [...context.path, 'security'], schemes, results);
  for (const { method, route, op, path } of allOperations(doc, context.path)) {
    check(op.security, label(method, route), [...path, 'security'], schemes, results);
  }
  return results;
};
