"""The Bicep under infra/ provisions what the runbook and the step engine rely on.

Every .bicep file is parsed with pycep; module parameters are followed back to main.bicep, so
an assertion on the queue's `maxDeliveryCount` checks the number main.bicep really passes.
Bicep itself cannot be compiled here (no Bicep CLI), which is why these checks are structural.
checkov then scans infra/ from its own virtualenv (`make setup` creates .venv-checkov).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from pycep import BicepParser

from shared.engine import layout

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
BICEP = INFRA / "bicep"
MAIN = BICEP / "main.bicep"
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"
CHECKOV_SKIPS = INFRA / "checkov-skips.yaml"
ENVIRONMENTS = ("dev", "stg", "prd")

BICEP_FILES = sorted(INFRA.rglob("*.bicep"))


# --- a small evaluator over pycep's JSON ------------------------------------------------------------


@dataclass
class Template:
    """One parsed .bicep file; `args` are the module parameters its caller passes (already evaluated)."""

    path: Path
    doc: dict[str, Any]
    args: dict[str, Any] = field(default_factory=dict)

    def value(self, node: Any, depth: int = 0) -> Any:
        """Evaluate what can be known before deployment: parameters (defaults or the caller's
        arguments), variables, property access, string(), replace() and union(). Anything else
        (resource properties, module outputs) comes back as pycep's node."""
        assert depth < 60, f"runaway evaluation in {self.path.name}"
        if isinstance(node, str):
            if node in self.args:
                return self.args[node]
            if node in self.doc.get("variables", {}):
                return self.value(self.doc["variables"][node]["value"], depth + 1)
            param = self.doc.get("parameters", {}).get(node)
            if param is not None and param["default"] is not None:
                return self.value(param["default"], depth + 1)
            return node
        if isinstance(node, list):
            return [self.value(item, depth + 1) for item in node]
        if not isinstance(node, dict):
            return node
        if _is_expression(node) and node.get("operator", {}).get("type") == "property_accessor":
            operands = node["operator"]["operands"]
            base = self.value(operands["operand_1"], depth + 1)
            if isinstance(base, dict) and operands["operand_2"] in base:
                return self.value(base[operands["operand_2"]], depth + 1)
            return node
        if _is_expression(node) and "function" in node:
            kind, args = node["function"]["type"], node["function"]["parameters"]
            if kind == "string":
                inner = self.value(args["value_to_convert"], depth + 1)
                if isinstance(inner, bool):
                    return str(inner).lower()
                if isinstance(inner, int):
                    return str(inner)
                if isinstance(inner, dict | list) and not any(
                    isinstance(part, dict) and _is_expression(part) for part in _parts(inner)
                ):
                    return json.dumps(inner, separators=(",", ":"))
                return node
            if kind == "replace":
                text, old, new = (
                    self.value(args[k], depth + 1) for k in ("original_string", "old_string", "new_string")
                )
                if all(isinstance(v, str) for v in (text, old, new)):
                    return text.replace(old, new)
                return node
            if kind == "union":
                parts = [self.value(arg, depth + 1) for arg in args.values() if arg is not None]
                if all(isinstance(p, dict) and not _is_expression(p) for p in parts):
                    merged: dict[str, Any] = {}
                    for part in parts:
                        merged.update(part)
                    return merged
                return node
            return node
        if _is_expression(node):
            return node
        return {key: self.value(item, depth + 1) for key, item in node.items()}

    def resources(self, resource_type: str) -> dict[str, dict[str, Any]]:
        """Symbolic name -> body of every resource of that type (loops and conditions unwrapped)."""
        found = {}
        for symbol, resource in self.doc.get("resources", {}).items():
            if resource["type"] == resource_type and not resource.get("existing"):
                found[symbol] = _unwrap(resource["config"])
        return found

    def resource(self, resource_type: str) -> dict[str, Any]:
        matches = self.resources(resource_type)
        assert len(matches) == 1, f"{self.path.name}: expected one {resource_type}, found {sorted(matches)}"
        return next(iter(matches.values()))

    def param(self, name: str) -> dict[str, Any]:
        return self.doc["parameters"][name]


def _parts(value: Any) -> list[Any]:
    """An evaluated dict or list itself and its items: string() can render it only if none is an expression."""
    if isinstance(value, list):
        return value
    return [value] if isinstance(value, dict) else []


def _is_expression(node: dict[str, Any]) -> bool:
    """pycep's shape for an expression: {"operator": {"type": ...}}, {"function": {"type": ...}} or a loop.
    (A plain object may have a string "operator" key, like an alert criterion.)"""
    return any(isinstance(node.get(key), dict) and "type" in node[key] for key in ("operator", "function")) or (
        "loop_type" in node
    )


def _unwrap(config: dict[str, Any]) -> dict[str, Any]:
    while "config" in config and ("loop_type" in config or "condition" in config):
        config = config["config"]
    return config


@cache
def _parse(path: Path) -> dict[str, Any]:
    return BicepParser().parse(file_path=path)


@cache
def _templates() -> dict[str, Template]:
    """main.bicep and each module it calls, keyed by path relative to infra/bicep."""
    main = Template(MAIN, _parse(MAIN))
    templates = {"main.bicep": main}
    for module in main.doc.get("modules", {}).values():
        relative = module["detail"]["path"]
        args = {name: main.value(arg) for name, arg in _unwrap(module["config"])["params"].items()}
        templates[relative] = Template(BICEP / relative, _parse(BICEP / relative), args)
    return templates


@pytest.fixture(scope="module")
def main() -> Template:
    return _templates()["main.bicep"]


@pytest.fixture(scope="module")
def modules() -> dict[str, Template]:
    return _templates()


def _module(modules: dict[str, Template], name: str) -> Template:
    return modules[f"modules/{name}.bicep"]


def _app_settings(main: Template) -> dict[str, Any]:
    return main.value("baseAppSettings")


def _iso_seconds(duration: str) -> int:
    match = re.fullmatch(r"PT(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?", duration)
    assert match and any(match.groups()), f"not an ISO 8601 time duration: {duration!r}"
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return hours * 3600 + minutes * 60 + seconds


# --- parsing --------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", BICEP_FILES, ids=[p.relative_to(INFRA).as_posix() for p in BICEP_FILES])
def test_every_bicep_file_parses_and_declares_something(path: Path) -> None:
    doc = _parse(path)
    assert doc.get("resources") or doc.get("modules"), f"{path} declares no resource or module"


def test_every_module_file_is_used_by_main(modules: dict[str, Template]) -> None:
    on_disk = {p.relative_to(BICEP).as_posix() for p in BICEP_FILES}
    assert on_disk == set(modules), "a .bicep file that main.bicep never calls is dead code"


# --- names ----------------------------------------------------------------------------------------


def test_names_are_derived_from_the_environment_in_one_place(main: Template, modules: dict[str, Template]) -> None:
    assert main.param("environment")["decorators"][-1] == {"type": "allowed", "argument": list(ENVIRONMENTS)}
    location_default = main.param("location")["default"]["operator"]["operands"]
    assert location_default["operand_1"]["function"]["type"] == "resource_group"
    assert location_default["operand_2"] == "location"

    names = main.value("names")
    runbook_names = {
        "functionApp": "agent-api-${environment}",
        "serviceBus": "agent-sb-${environment}",
        "search": "agent-search-${environment}",
        "openai": "agent-openai-${environment}",
        "logs": "agent-logs-${environment}",
        "appInsights": "agent-appi-${environment}",
        "identity": "agent-id-${environment}",
    }
    for key, prefix in runbook_names.items():
        assert names[key].startswith(prefix), f"names.{key} = {names[key]!r}, want {prefix}..."
    assert main.param("nameSuffix")["default"] == "", "the runbook names must be the default"

    # Storage: global, lowercase alphanumerics, at most 24 characters.
    storage = names["storage"]["function"]
    assert storage["type"] == "take" and storage["parameters"]["number_to_take"] == 24
    inner = storage["parameters"]["original_value"]["function"]
    assert inner["type"] == "to_lower"
    literal = inner["parameters"]["string_to_change"]
    assert "-" not in literal and "${environment}" in literal and "uniqueString(resourceGroup().id)" in literal
    fixed = literal.replace("${environment}", "").replace("${uniqueString(resourceGroup().id)}", "")
    assert len(fixed) + max(map(len, ENVIRONMENTS)) + 13 <= 24, "the name would be cut short of its unique part"

    # Modules take their names as parameters: none spells one of its own.
    for relative, template in modules.items():
        if relative != "main.bicep":
            assert "'agent-" not in template.path.read_text(encoding="utf-8"), f"{relative} hard-codes a name"

    function_app = _module(modules, "functionapp")
    assert function_app.args["name"] == names["functionApp"]
    assert _module(modules, "servicebus").args["name"] == names["serviceBus"]
    assert _module(modules, "search").args["name"] == names["search"]
    assert _module(modules, "openai").args["name"] == names["openai"]
    assert _module(modules, "storage").args["name"] == names["storage"]


# --- Service Bus ----------------------------------------------------------------------------------


def test_agent_jobs_queue_has_the_step_engine_contract(main: Template, modules: dict[str, Template]) -> None:
    servicebus = _module(modules, "servicebus")
    namespace = servicebus.resource("Microsoft.ServiceBus/namespaces")
    assert namespace["sku"]["name"] == "Standard", "duplicate detection needs Standard or Premium"
    assert namespace["properties"]["minimumTlsVersion"] == "1.2"
    assert namespace["properties"]["disableLocalAuth"] is True

    queues = servicebus.resources("Microsoft.ServiceBus/namespaces/queues")
    assert sorted(queues) == ["continuationQueue", "queue"], "first steps and continuations, one queue each"
    queue, continuations = queues["queue"], queues["continuationQueue"]
    assert servicebus.value(queue["name"]) == "agent-jobs"
    assert servicebus.value(continuations["name"]) == "agent-continuations"
    assert servicebus.value(continuations["properties"]) == servicebus.value(queue["properties"])
    props = servicebus.value(queue["properties"])
    assert props["maxDeliveryCount"] == 10
    assert props["lockDuration"] == "PT5M"
    assert props["requiresDuplicateDetection"] is True
    assert props["duplicateDetectionHistoryTimeWindow"] == "PT10M"
    assert props["deadLetteringOnMessageExpiration"] is True
    assert props["requiresSession"] is False, "one step of a job at a time needs no sessions"

    # The app reads the same numbers, so the embedded queue behaves like this one.
    contract = main.value("queue")
    assert contract["lockDurationSeconds"] == _iso_seconds(contract["lockDuration"])
    assert contract["duplicateWindowSeconds"] == _iso_seconds(contract["duplicateDetectionHistoryTimeWindow"])
    settings = _app_settings(main)
    assert settings["AGENT_JOBS_QUEUE"] == "agent-jobs"
    assert settings["AGENT_CONTINUATIONS_QUEUE"] == "agent-continuations"
    assert settings["QUEUE_MAX_DELIVERY_COUNT"] == "10"
    assert settings["QUEUE_LOCK_SECONDS"] == "300"
    assert settings["QUEUE_DUPLICATE_WINDOW_SECONDS"] == "600"


# --- Function App ---------------------------------------------------------------------------------


def test_function_app_runs_python_311_on_flex_consumption(main: Template, modules: dict[str, Template]) -> None:
    app = _module(modules, "functionapp")
    plan = app.resource("Microsoft.Web/serverfarms")
    assert plan["sku"] == {"tier": "FlexConsumption", "name": "FC1"}
    assert plan["properties"]["reserved"] is True

    site = app.resource("Microsoft.Web/sites")
    assert site["kind"] == "functionapp,linux"
    assert site["identity"]["type"] == "UserAssigned"
    props = site["properties"]
    assert props["httpsOnly"] is True
    config = props["functionAppConfig"]
    assert config["runtime"] == {"name": "python", "version": "3.11"}
    storage = config["deployment"]["storage"]
    assert storage["type"] == "blobContainer"
    assert storage["authentication"]["type"] == "UserAssignedIdentity"
    assert app.args["deploymentContainerUrl"].endswith("${deploymentContainer}")

    scale = app.value(config["scaleAndConcurrency"])
    assert scale["maximumInstanceCount"] == main.param("maximumInstanceCount")["default"]
    assert 1 <= scale["maximumInstanceCount"] <= 1000
    assert scale["instanceMemoryMB"] in (512, 2048, 4096)
    assert scale["triggers"]["http"]["perInstanceConcurrency"] >= 1
    azd_tags = {key.strip("'"): value for key, value in site["tags"]["function"]["parameters"]["arg_2"].items()}
    assert azd_tags == {"azd-service-name": "api"}, "azd deploys to the resource with this tag"

    basic_auth = app.resources("Microsoft.Web/sites/basicPublishingCredentialsPolicies")
    assert sorted(policy["name"] for policy in basic_auth.values()) == ["ftp", "scm"]
    assert all(policy["properties"]["allow"] is False for policy in basic_auth.values())


def test_app_settings_are_the_ones_the_app_reads(main: Template) -> None:
    settings = _app_settings(main)
    for name in (
        "AGENT_JOBS_QUEUE",
        "AGENT_CONTINUATIONS_QUEUE",
        "ServiceBusConnection__fullyQualifiedNamespace",
        "AzureWebJobsStorage__blobServiceUri",
        "SEARCH_ENDPOINT",
        "SEARCH_INDEX_NAME",
        "AZURE_OPENAI_ENDPOINT",
        "AZURE_OPENAI_DEPLOYMENT",
        "AZURE_OPENAI_EMBEDDING_DEPLOYMENT",
        "APPLICATIONINSIGHTS_CONNECTION_STRING",
        "MONTHLY_TOKEN_BUDGET",
        "BACKUP_SCHEDULE",
        "DLQ_SWEEP_SCHEDULE",
        "WEEKLY_CHECKS_SCHEDULE",
        "RETENTION_SCHEDULE",
        "SCHEDULES_SCHEDULE",
        "STUCK_JOBS_SCHEDULE",
    ):
        assert name in settings, f"app setting {name} is missing"
    assert settings["APP_ENV"] == "production"
    assert settings["SEARCH_INDEX_NAME"] == "knowledge"
    # Flex Consumption rejects these: the runtime comes from functionAppConfig.
    assert not {"FUNCTIONS_WORKER_RUNTIME", "FUNCTIONS_EXTENSION_VERSION", "WEBSITE_RUN_FROM_PACKAGE"} & set(settings)

    # Every setting is read either by the Functions host / Azure SDK or by shared/settings.py
    # (a typo here would leave the app on its default silently).
    from shared.settings import Settings

    app_names = set()
    for model_field in Settings.model_fields.values():
        alias = model_field.validation_alias
        app_names.update(str(n) for n in getattr(alias, "choices", [alias]) if n)
    host_names = {
        "AZURE_CLIENT_ID",
        "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
        "AzureWebJobsStorage__queueServiceUri",
        "AzureWebJobsStorage__tableServiceUri",
        "AzureWebJobsStorage__credential",
        "AzureWebJobsStorage__clientId",
        "ServiceBusConnection__credential",
        "ServiceBusConnection__clientId",
    }
    gateway_settings = main.value("gatewaySettings")["operator"]["operands"]["true_value"]
    unknown = (set(settings) | set(gateway_settings)) - app_names - host_names
    assert not unknown, f"app settings nobody reads: {sorted(unknown)}"

    union = main.doc["modules"]["functionApp"]["config"]["params"]["appSettings"]["function"]
    assert union["type"] == "union"
    assert list(union["parameters"].values()) == [
        "baseAppSettings",
        "concurrencySettings",
        "gatewaySettings",
        "appSettingsOverrides",
        "apiKeySettings",
    ], "the template's settings first, the environment's overrides after, API_KEYS last"
    assert main.param("appSettingsOverrides")["default"] == {}
    for name, value in main.value("concurrencySettings")["operator"]["operands"]["true_value"].items():
        assert name.startswith("AzureFunctionsJobHost__"), name
        assert value["function"]["type"] == "string"


def test_connections_are_identity_based_with_no_keys(main: Template, modules: dict[str, Template]) -> None:
    settings = _app_settings(main)
    for connection in ("AzureWebJobsStorage", "ServiceBusConnection"):
        assert settings[f"{connection}__credential"] == "managedidentity"
        assert settings[f"{connection}__clientId"] == settings["AZURE_CLIENT_ID"]
    assert "AzureWebJobsStorage" not in settings and "ServiceBusConnection" not in settings
    for name in settings:
        assert not re.search(r"(?i)(_KEY|PASSWORD|SECRET|SAS)$", name), f"{name} looks like a secret"

    text = "\n".join(path.read_text(encoding="utf-8") for path in BICEP_FILES)
    for forbidden in (
        "listKeys",
        "listConnectionStrings",
        "listAccountSas",
        "listServiceSas",
        "AccountKey=",
        "SharedAccessKey",
        "primaryKey",
        "adminKey",
    ):
        assert forbidden not in text, f"{forbidden} in infra: secrets must not reach app settings"

    # The one secret the app has, its callers' API keys, enters only through @secure() parameters.
    assert {"type": "secure"} in main.param("apiKeys")["decorators"]
    api_key_settings = main.value("apiKeySettings")["operator"]["operands"]
    assert api_key_settings["true_value"] == {} and api_key_settings["false_value"] == {"API_KEYS": "apiKeys"}
    assert {"type": "secure"} in _module(modules, "functionapp").param("appSettings")["decorators"]

    # Local (key) authentication is off on every data service.
    storage = _module(modules, "storage").resource("Microsoft.Storage/storageAccounts")["properties"]
    assert storage["allowSharedKeyAccess"] is False
    assert _module(modules, "search").resource("Microsoft.Search/searchServices")["properties"]["disableLocalAuth"]
    openai = _module(modules, "openai").resource("Microsoft.CognitiveServices/accounts")
    assert openai["kind"] == "OpenAI" and openai["properties"]["disableLocalAuth"] is True
    assert openai["properties"]["customSubDomainName"] == "name"

    # No output carries a secret either.
    for name, output in main.doc["outputs"].items():
        assert "ConnectionString" not in json.dumps(output["value"]), f"output {name} leaks a connection string"


def test_identity_holds_the_data_roles_it_needs(modules: dict[str, Template]) -> None:
    roles = _module(modules, "roles")
    role_ids = roles.value("roleIds")
    expected = {
        "storageBlobDataOwner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
        "storageQueueDataContributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
        "serviceBusDataOwner": "090c5cfd-751d-490a-894a-3ce6f1109419",
        "searchIndexDataContributor": "8ebe5a00-799e-43f5-93ac-243d3dce84a7",
        "searchServiceContributor": "7ca78c08-252a-4471-8644-bb5ff32d4ba0",
        "cognitiveServicesOpenAIUser": "5e0bd9bd-7b93-4f28-af87-19fc36ad61bd",
        "monitoringMetricsPublisher": "3913510d-42f4-4e42-8a64-420c390055eb",
    }
    for key, role_id in expected.items():
        assert role_ids.get(key) == role_id, key

    app_roles, operator_roles = {}, {}
    for symbol, resource in roles.doc["resources"].items():
        if resource["type"] != "Microsoft.Authorization/roleAssignments":
            continue
        assignment = _unwrap(resource["config"])
        props = assignment["properties"]
        definition = props["roleDefinitionId"]["function"]["parameters"]["resource_name_1"]
        role_key = definition["operator"]["operands"]["operand_2"]
        if props["principalId"] == "principalId":
            assert props["principalType"] == "ServicePrincipal", symbol
            assert "condition" not in resource["config"], f"{symbol}: the app's roles are unconditional"
            app_roles[role_key] = assignment["scope"]
        else:
            assert props["principalId"] == "operatorPrincipalId", symbol
            assert resource["config"].get("condition") == "hasOperators", f"{symbol} must be optional"
            operator_roles[role_key] = assignment["scope"]
    assert set(expected) <= set(app_roles), f"missing role assignments: {set(expected) - set(app_roles)}"
    assert app_roles["serviceBusDataOwner"] == "serviceBus"
    assert app_roles["cognitiveServicesOpenAIUser"] == "openai"
    assert app_roles["storageBlobDataOwner"] == "storage"
    assert app_roles["searchIndexDataContributor"] == "search"
    assert app_roles["monitoringMetricsPublisher"] == "appInsights"
    # Operators (agentctl, the runbook's az commands) need data roles too: keys are disabled.
    assert operator_roles == {
        "storageBlobDataContributor": "storage",
        "serviceBusDataOwner": "serviceBus",
        "searchIndexDataContributor": "search",
    }


# --- Storage --------------------------------------------------------------------------------------


def test_storage_is_private_versioned_and_soft_deleted(main: Template, modules: dict[str, Template]) -> None:
    storage = _module(modules, "storage")
    props = storage.resource("Microsoft.Storage/storageAccounts")["properties"]
    assert props["supportsHttpsTrafficOnly"] is True
    assert props["minimumTlsVersion"] == "TLS1_2"
    assert props["allowBlobPublicAccess"] is False
    assert props["allowSharedKeyAccess"] is False
    assert main.param("storageSku")["default"] == "Standard_GRS", "the runbook relies on geo-redundant storage"

    blob = storage.value(storage.resource("Microsoft.Storage/storageAccounts/blobServices")["properties"])
    assert blob["isVersioningEnabled"] is True
    for policy in ("deleteRetentionPolicy", "containerDeleteRetentionPolicy"):
        assert blob[policy]["enabled"] is True
        assert blob[policy]["days"] >= 7, policy

    containers = storage.doc["resources"]["blobContainers"]["config"]
    assert _unwrap(containers)["properties"]["publicAccess"] == "None"
    names = storage.value(containers["loop_type"]["detail"]["array_name"])
    # Every container the app writes (shared/engine/layout.py) exists before the app's first write.
    for required in (*(c.name for c in layout.CONTAINERS), main.value("deploymentContainer")):
        assert required in names, f"container {required} is missing"

    lifecycle = storage.value(storage.resource("Microsoft.Storage/storageAccounts/managementPolicies")["properties"])
    version_rule = lifecycle["policy"]["rules"][0]["definition"]["actions"]["version"]
    assert version_rule["delete"]["daysAfterCreationGreaterThan"] >= 1


# --- Search, OpenAI, monitoring -------------------------------------------------------------------


def test_search_openai_and_monitoring(main: Template, modules: dict[str, Template]) -> None:
    search = _module(modules, "search")
    service = search.value(search.resource("Microsoft.Search/searchServices"))
    assert service["sku"]["name"] == "basic"
    assert service["properties"]["semanticSearch"] in ("free", "standard")

    openai = _module(modules, "openai")
    deployments = {
        symbol: openai.value(body["properties"]["model"])
        for symbol, body in openai.resources("Microsoft.CognitiveServices/accounts/deployments").items()
    }
    assert set(deployments) == {"chat", "embedding"}
    assert deployments["chat"]["name"] == main.param("chatModelName")["default"]
    assert deployments["embedding"]["name"] == main.param("embeddingModelName")["default"]
    assert "chat" in openai.doc["resources"]["embedding"]["config"]["dependsOn"], "deployments must not race"

    monitoring = _module(modules, "monitoring")
    insights = monitoring.resource("Microsoft.Insights/components")["properties"]
    assert insights["WorkspaceResourceId"]["operator"]["operands"]["operand_1"] == "workspace"
    assert insights["IngestionMode"] == "LogAnalytics"


# --- API Management (optional gateway) ------------------------------------------------------------


def test_api_management_limits_every_instance_behind_a_flag(main: Template, modules: dict[str, Template]) -> None:
    """The in-app limit counters are per instance on Azure; the gateway's rate-limit-by-key counters are
    the deployment-wide ones (docs/security.md), with the app's default numbers."""
    from shared.settings import Settings

    assert main.param("enableApiManagement")["default"] is False, "API Management is opt-in (it has its own cost)"
    module = main.doc["modules"]["apim"]
    assert module["detail"]["path"] == "modules/apim.bicep"
    assert module["config"]["condition"] == "enableApiManagement"

    apim = _module(modules, "apim")
    assert apim.args["name"] == main.value("names")["apiManagement"]
    assert apim.args["name"].startswith("agent-apim-${environment}")
    # rate-limit-by-key does not exist on the Consumption tier: a policy using it would fail to deploy there.
    for template, name in ((apim, "sku"), (main, "apiManagementSku")):
        allowed = template.param(name)["decorators"][-1]
        assert allowed["type"] == "allowed" and "Consumption" not in allowed["argument"], name
        assert template.param(name)["default"] == "BasicV2"
    assert apim.args["sku"] == "BasicV2"
    backend = json.dumps(apim.args["backendHostname"])  # functionApp.outputs.defaultHostname
    assert '"operand_1": "functionApp"' in backend and '"operand_2": "defaultHostname"' in backend

    service = apim.resource("Microsoft.ApiManagement/service")
    assert service["sku"]["name"] == "sku"
    api = apim.resource("Microsoft.ApiManagement/service/apis")["properties"]
    assert api["path"] == "api" and api["protocols"] == ["https"]
    assert api["serviceUrl"] == "https://${backendHostname}/api"
    assert api["subscriptionRequired"] is False, "callers authenticate in the app with their own keys"
    operations = apim.resource("Microsoft.ApiManagement/service/apis/operations")["properties"]
    assert operations["urlTemplate"] == "/*"
    assert {"GET", "POST", "PUT", "PATCH", "DELETE"} <= set(apim.value("methods"))

    # The limits the gateway enforces are the app's defaults, unless an environment changes both.
    fields = Settings.model_fields
    assert main.param("apiManagementKeyCallsPerMinute")["default"] == fields["rate_limit_per_minute"].default == 600
    assert main.param("apiManagementAuthFailuresPerMinute")["default"] == fields["auth_failures_per_minute"].default
    policy = apim.value(apim.resource("Microsoft.ApiManagement/service/apis/policies")["properties"]["value"])
    assert isinstance(policy, str), "the policy must evaluate to XML"
    limits = re.findall(r"<rate-limit-by-key\s([^>]*)/>", policy)
    assert len(limits) == 2, policy
    by_key, by_address = ({k: v for k, v in re.findall(r'([\w-]+)="((?:@\(.*?\))|[^"]*)"', tag)} for tag in limits)
    assert by_key["calls"] == "600" and by_key["renewal-period"] == "60"
    assert 'GetValueOrDefault("X-API-Key"' in by_key["counter-key"]
    assert 'GetValueOrDefault("Authorization"' in by_key["counter-key"]
    assert by_key["increment-condition"] == "@(context.Response.StatusCode != 401)", "a wrong key spends no quota"
    assert by_address["calls"] == str(fields["auth_failures_per_minute"].default) == "20"
    assert by_address["renewal-period"] == "60"
    assert "context.Request.IpAddress" in by_address["counter-key"]
    condition = by_address["increment-condition"]
    assert condition.startswith("@(context.Response.StatusCode == 401 ? ("), "only failed authentications count"
    assert condition.endswith(") : false)")
    assert 'ContainsKey("X-API-Key")' in condition and 'ContainsKey("Authorization")' in condition, (
        "a request without any key guesses nothing and is not counted, as in the app"
    )
    assert policy.count("<base />") == 4
    # docs/security.md shows the policy the template deploys, with the default numbers.
    documented = " ".join((ROOT / "docs" / "security.md").read_text(encoding="utf-8").split())
    for tag in limits:
        assert " ".join(f"<rate-limit-by-key {tag}/>".split()) in documented, "docs/security.md shows another policy"

    # The app answers to the gateway's host name only when the gateway exists.
    gateway = main.value("gatewaySettings")["operator"]["operands"]
    assert gateway["condition"] == "enableApiManagement" and gateway["false_value"] == {}
    assert json.loads(main.value(gateway["true_value"])["ALLOWED_HOSTS"]) == [
        "*.azurewebsites.net",
        "${names.apiManagement}.azure-api.net",
    ]
    assert main.value("apiManagementGatewayHost") == "${names.apiManagement}.azure-api.net"
    output = main.doc["outputs"]["apiGatewayUrl"]["value"]["operator"]["operands"]
    assert output["condition"] == "enableApiManagement"
    assert output["true_value"] == "https://${apiManagementGatewayHost}"


# --- alerts ---------------------------------------------------------------------------------------


def _log_alert(alerts: Template, table: str, contains: str = "") -> tuple[dict[str, Any], str]:
    for rule in alerts.resources("Microsoft.Insights/scheduledQueryRules").values():
        props = alerts.value(rule["properties"])
        query = props["criteria"]["allOf"][0]["query"]
        if isinstance(query, str) and re.search(rf"^{table}\b", query, re.MULTILINE) and contains in query:
            return props, query
    raise AssertionError(f"no log alert queries {table} {contains}")


def _metric_alert(alerts: Template, metric: str) -> tuple[dict[str, Any], dict[str, Any]]:
    for rule in alerts.resources("Microsoft.Insights/metricAlerts").values():
        props = alerts.value(rule["properties"])
        criterion = props["criteria"]["allOf"][0]
        if criterion["metricName"] == metric:
            return props, criterion
    raise AssertionError(f"no metric alert on {metric}")


def _sends_to_the_action_group(props: dict[str, Any]) -> bool:
    actions = json.dumps(props.get("actions"))
    return '"operand_1": "actionGroup"' in actions and '"operand_2": "id"' in actions


def test_error_rate_alert_is_over_5_percent_for_5_minutes(modules: dict[str, Template]) -> None:
    alerts = _module(modules, "alerts")
    props, query = _log_alert(alerts, "requests")
    criterion = props["criteria"]["allOf"][0]
    assert props["windowSize"] == "PT5M" and props["evaluationFrequency"] == "PT5M"
    assert "countif(success == false)" in query
    assert "failure_percent = 100.0 * failed / total" in query
    assert criterion["metricMeasureColumn"] == "failure_percent"
    assert (criterion["operator"], criterion["threshold"]) == ("GreaterThan", 5)
    assert _sends_to_the_action_group(props)


def test_queue_backlog_alert_is_over_100_active_messages_on_agent_jobs(modules: dict[str, Template]) -> None:
    props, criterion = _metric_alert(_module(modules, "alerts"), "ActiveMessages")
    assert criterion["metricNamespace"] == "Microsoft.ServiceBus/namespaces"
    both = ["agent-jobs", "agent-continuations"]  # first steps and continuations
    assert criterion["dimensions"] == [{"name": "EntityName", "operator": "Include", "values": both}]
    assert (criterion["operator"], criterion["threshold"]) == ("GreaterThan", 100)
    assert '"operand_1": "serviceBus"' in json.dumps(props["scopes"])
    assert _sends_to_the_action_group(props)


def test_dead_letter_alert_fires_on_any_dead_lettered_step(modules: dict[str, Template]) -> None:
    props, criterion = _metric_alert(_module(modules, "alerts"), "DeadletteredMessages")
    both = ["agent-jobs", "agent-continuations"]  # first steps and continuations
    assert criterion["dimensions"] == [{"name": "EntityName", "operator": "Include", "values": both}]
    assert (criterion["operator"], criterion["threshold"]) == ("GreaterThan", 0)
    assert criterion["timeAggregation"] == "Maximum"
    assert _sends_to_the_action_group(props)


def test_token_alert_is_80_percent_of_the_monthly_budget(main: Template, modules: dict[str, Template]) -> None:
    alerts = _module(modules, "alerts")
    props, query = _log_alert(alerts, "customMetrics", "agent.budget.used")
    criterion = props["criteria"]["allOf"][0]
    # The app records each tenant's month-to-date tokens as a % of its budget (shared/metrics.record_budget).
    assert 'where name == "agent.budget.used"' in query
    assert "where timestamp >= startofmonth(now())" in query
    assert "tostring(customDimensions.tenant)" in query
    assert "budget_percent = max(valueMax) by tenant" in query
    assert criterion["metricMeasureColumn"] == "budget_percent"
    assert (criterion["operator"], criterion["threshold"]) == ("GreaterThan", 80)
    assert criterion["dimensions"][0]["name"] == "tenant"
    assert props["windowSize"] == "P1D"
    assert _sends_to_the_action_group(props)


def test_stuck_job_alert_fires_on_any_repair_or_failure_of_the_detector(modules: dict[str, Template]) -> None:
    alerts = _module(modules, "alerts")
    props, query = _log_alert(alerts, "customMetrics", "agent.jobs.stuck")
    criterion = props["criteria"]["allOf"][0]
    # shared/observability/metrics.record_stuck_job counts each repair/failure with its action.
    assert '"agent.jobs.stuck"' in (ROOT / "shared" / "observability" / "metrics.py").read_text(encoding="utf-8")
    assert 'where name == "agent.jobs.stuck"' in query
    assert "stuck_jobs = sum(valueSum)" in query
    assert criterion["metricMeasureColumn"] == "stuck_jobs"
    assert (criterion["operator"], criterion["threshold"]) == ("GreaterThan", 0)
    assert props["windowSize"] == props["evaluationFrequency"] == "PT15M"
    assert _sends_to_the_action_group(props)


def test_alerts_go_to_the_operators_email(main: Template, modules: dict[str, Template]) -> None:
    alerts = _module(modules, "alerts")
    group = alerts.value(alerts.resource("Microsoft.Insights/actionGroups")["properties"])
    assert group["emailReceivers"][0]["emailAddress"] == "alertEmail"
    assert main.param("alertEmail")["default"] is None, "the alert address must be chosen per environment"
    assert len(main.value("names")["actionGroupShortName"].replace("${environment}", "prd")) <= 12
    assert len(alerts.resources("Microsoft.Insights/scheduledQueryRules")) == 3
    assert len(alerts.resources("Microsoft.Insights/metricAlerts")) == 2


# --- parameter files, azd -------------------------------------------------------------------------


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_parameter_file_per_environment(main: Template, environment: str) -> None:
    path = BICEP / f"main.{environment}.bicepparam"
    text = path.read_text(encoding="utf-8")
    assert re.search(r"^using 'main\.bicep'$", text, re.MULTILINE)
    assigned = dict(re.findall(r"^param (\w+) = (.+)$", text, re.MULTILINE))
    assert assigned["environment"] == f"'{environment}'"
    assert assigned["location"] == "'japaneast'"
    unknown = set(assigned) - set(main.doc["parameters"])
    assert not unknown, f"{path.name} sets parameters main.bicep does not have: {sorted(unknown)}"
    required = {name for name, p in main.doc["parameters"].items() if p["default"] is None}
    assert required <= set(assigned), f"{path.name} misses required parameters {sorted(required - set(assigned))}"
    if environment == "prd":
        # No default: a production deployment without the keys fails instead of dropping API_KEYS.
        assert assigned["apiKeys"] == "readEnvironmentVariable('AGENT_API_KEYS')"


def test_azure_yaml_deploys_the_function_app_with_azd() -> None:
    config = yaml.safe_load((ROOT / "azure.yaml").read_text(encoding="utf-8"))
    assert config["name"] == "agent-framework"
    assert config["infra"] == {"provider": "bicep", "path": "infra/bicep", "module": "main"}
    assert config["services"]["api"] == {"project": ".", "language": "python", "host": "function"}


# --- checkov --------------------------------------------------------------------------------------


def _accepted_failures() -> dict[str, str]:
    """Check id -> written reason, from the skip-check list of infra/checkov-skips.yaml."""
    text = CHECKOV_SKIPS.read_text(encoding="utf-8")
    entries = [line for line in text.splitlines() if re.match(r"\s*-\s*CKV", line)]
    reasons = {}
    for line in entries:
        match = re.fullmatch(r"\s*-\s*(CKV2?_[A-Z0-9_]+)\s*#\s*(.*\S)\s*", line)
        assert match and len(match.group(2)) >= 30, f"skip without a written reason: {line.strip()!r}"
        reasons[match.group(1)] = match.group(2)
    assert sorted(reasons) == sorted(yaml.safe_load(text)["skip-check"]), "checkov would read another list"
    return reasons


def _checkov(*extra: str) -> subprocess.Popen[str]:
    command = [
        str(CHECKOV),
        "-d",
        "infra",
        "--framework",
        "bicep",
        "--compact",
        "--quiet",
        "-o",
        "json",
        "--skip-download",
        *extra,
    ]
    # checkov 3.3.30 keys Bicep parameters by bare name across all files, so which file's `name` or
    # `location` it resolves can follow hash order; a fixed seed keeps the results reproducible.
    environment = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONHASHSEED": "0"}
    return subprocess.Popen(
        command, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment
    )


def _report(process: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = process.communicate(timeout=150)
    assert process.returncode in (0, 1), f"checkov failed ({process.returncode}): {err[-2000:]}"
    report = json.loads(out)
    report = report[0] if isinstance(report, list) else report
    summary = report["summary"]
    assert summary["parsing_errors"] == 0, "checkov could not parse a template, so it did not check it"
    assert summary["resource_count"] > 40, f"checkov saw too few resources: {summary}"
    return report


def test_checkov_finds_nothing_that_is_not_accepted_in_writing() -> None:
    """Without a Prisma Cloud key checkov reports no severities, so every failed check counts
    unless infra/checkov-skips.yaml accepts it with a reason."""
    if not CHECKOV.exists():
        pytest.fail(f"{CHECKOV.relative_to(ROOT)} is missing: run `make setup` (checkov lives in its own venv)")
    accepted = _accepted_failures()
    unfiltered, with_skips = _checkov(), _checkov("--config-file", str(CHECKOV_SKIPS.relative_to(ROOT)))
    report = _report(unfiltered)
    failed = report.get("results", {}).get("failed_checks", [])

    unaccepted = [
        f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}"
        for c in failed
        if c["check_id"] not in accepted
    ]
    assert not unaccepted, "checkov failures nobody accepted:\n" + "\n".join(unaccepted)
    stale = set(accepted) - {c["check_id"] for c in failed}
    assert not stale, f"skips for checks that pass now; remove them from checkov-skips.yaml: {sorted(stale)}"

    # And checkov's own skip mechanism, reading the same file, leaves no failure.
    filtered = _report(with_skips)
    assert filtered["summary"]["failed"] == 0
    assert filtered["summary"]["passed"] == report["summary"]["passed"]
