// Optional API Management gateway in front of the Function App (main.bicep: enableApiManagement).
// Why: the app's limit counters (DATA_DIR/limits.db) live on one instance's disk, and Flex
// Consumption scales out to many instances, so in-app limits hold per instance only. The gateway's
// rate-limit-by-key counters are shared by the whole deployment; the in-app counters stay behind
// it as a per-instance backstop (docs/security.md, "Limits").

param location string
param tags object
param name string

// Not Consumption: rate-limit-by-key, the policy this gateway exists for, is not available on the
// Consumption tier (only rate-limit per subscription is). BasicV2 is the smallest tier with an SLA that
// has it; Developer is cheaper but has no SLA (a dev environment may choose it).
@description('API Management tier (one unit). Consumption is not offered: it has no rate-limit-by-key.')
@allowed([
  'Developer'
  'Basic'
  'BasicV2'
  'Standard'
  'StandardV2'
  'Premium'
])
param sku string = 'BasicV2'

param publisherEmail string
param publisherName string

@description('Host name of the Function App (its defaultHostName): the backend every operation forwards to.')
param backendHostname string

@description('Requests per minute of one presented key (X-API-Key, else Authorization); the app\'s RATE_LIMIT_PER_MINUTE.')
@minValue(1)
param keyCallsPerMinute int

@description('Failed authentications (401) per minute from one client address; the app\'s AUTH_FAILURES_PER_MINUTE.')
@minValue(1)
param authFailuresPerMinute int

// Callers authenticate in the app with their own keys (X-API-Key or Authorization: Bearer); the
// gateway does not require an APIM subscription and forwards both headers untouched (APIM passes
// request headers through unless a policy removes them). The policy is rawxml: expressions are written
// as in the portal, unescaped; the conditions avoid '&' so the text reads the same either way.
//
// Key limit: every request that presents a key counts against that key, except the 401s (a wrong key
// guesses; it does not spend a real key's quota). Address limit: only the 401s of requests that
// presented a key count (a request without any key guesses nothing, as in the app), so guessing from
// one address stops after authFailuresPerMinute, as AUTH_FAILURES_PER_MINUTE does in the app.
var policyTemplate = '''
<policies>
  <inbound>
    <base />
    <rate-limit-by-key calls="{keyCalls}" renewal-period="60"
        counter-key="@("key:" + context.Request.Headers.GetValueOrDefault("X-API-Key", context.Request.Headers.GetValueOrDefault("Authorization", "anonymous")))"
        increment-condition="@(context.Response.StatusCode != 401)" />
    <rate-limit-by-key calls="{authFailures}" renewal-period="60"
        counter-key="@("address:" + context.Request.IpAddress)"
        increment-condition="@(context.Response.StatusCode == 401 ? (context.Request.Headers.ContainsKey("X-API-Key") || context.Request.Headers.ContainsKey("Authorization")) : false)" />
  </inbound>
  <backend>
    <base />
  </backend>
  <outbound>
    <base />
  </outbound>
  <on-error>
    <base />
  </on-error>
</policies>
'''

var policy = replace(replace(policyTemplate, '{keyCalls}', string(keyCallsPerMinute)), '{authFailures}', string(authFailuresPerMinute))

// The app's routes all live under /api; the gateway forwards every method and path below it.
var methods = [
  'GET'
  'POST'
  'PUT'
  'PATCH'
  'DELETE'
  'HEAD'
  'OPTIONS'
]

resource service 'Microsoft.ApiManagement/service@2024-05-01' = {
  name: name
  location: location
  tags: tags
  sku: {
    name: sku
    capacity: 1
  }
  properties: {
    publisherEmail: publisherEmail
    publisherName: publisherName
  }
}

resource api 'Microsoft.ApiManagement/service/apis@2024-05-01' = {
  parent: service
  name: 'rest-api'
  properties: {
    displayName: 'Agent API'
    path: 'api'
    protocols: [
      'https'
    ]
    serviceUrl: 'https://${backendHostname}/api'
    subscriptionRequired: false
  }
}

resource operations 'Microsoft.ApiManagement/service/apis/operations@2024-05-01' = [for method in methods: {
  parent: api
  name: toLower('all-${method}')
  properties: {
    displayName: '${method} /*'
    method: method
    urlTemplate: '/*'
  }
}]

resource apiPolicy 'Microsoft.ApiManagement/service/apis/policies@2024-05-01' = {
  parent: api
  name: 'policy'
  properties: {
    format: 'rawxml'
    value: policy
  }
}

output name string = service.name
output gatewayUrl string = service.properties.gatewayUrl
