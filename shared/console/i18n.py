"""The console's words in English and Japanese, and which of the two a request gets.

The operators read Japanese; the browser's Accept-Language chooses, a cookie set by the
language switch overrides it. A missing Japanese entry falls back to English, never to a key.
"""

from __future__ import annotations

from collections.abc import Callable

LANGUAGES = ("en", "ja")
COOKIE = "console_lang"

# id: (English, Japanese)
MESSAGES: dict[str, tuple[str, str]] = {
    "console": ("Operator console", "運用コンソール"),
    "skip": ("Skip to content", "本文へ移動"),
    "overview": ("Overview", "概要"),
    "jobs": ("Jobs", "ジョブ"),
    "dead_letters": ("Dead letters", "デッドレター"),
    "knowledge": ("Knowledge", "ナレッジ"),
    "usage": ("Usage", "使用量"),
    "maintenance": ("Maintenance", "メンテナンス"),
    "sign_in": ("Sign in", "サインイン"),
    "sign_out": ("Sign out", "サインアウト"),
    "signed_in_as": ("Signed in: tenant {tenant}, role {role}", "サインイン中: テナント {tenant}、ロール {role}"),
    "all_tenants": ("all tenants", "全テナント"),
    "operator_key": ("Operator key", "オペレーターキー"),
    "sign_in_help": (
        "Sign in with an operator API key. Submitter keys cannot sign in.",
        "オペレーターの API キーでサインインします。サブミッターキーではサインインできません。",
    ),
    "key_invalid": ("That key is not valid.", "このキーは無効です。"),
    "key_not_operator": (
        "This key cannot sign in to the console: it needs an operator key.",
        "このキーではコンソールにサインインできません。オペレーターキーが必要です。",
    ),
    "rate_limited": (
        "Too many attempts; wait a moment and try again.",
        "試行回数が多すぎます。少し待ってから再試行してください。",
    ),
    "signed_out": ("You are signed out.", "サインアウトしました。"),
    "session_expired": ("Please sign in.", "サインインしてください。"),
    "csrf_failed": (
        "The form expired or did not come from this console; reload the page and try again.",
        "フォームの有効期限が切れたか、このコンソール以外から送信されました。再読み込みしてやり直してください。",
    ),
    "language": ("Language", "言語"),
    "health": ("Dependencies", "依存サービス"),
    "status": ("Status", "状態"),
    "up": ("up", "正常"),
    "down": ("down", "停止"),
    "time_ms": ("Time (ms)", "所要時間 (ms)"),
    "detail": ("Detail", "詳細"),
    "queue": ("Step queue", "ステップキュー"),
    "active": ("Active", "処理待ち"),
    "scheduled": ("Scheduled", "予約済み"),
    "dead_lettered": ("Dead-lettered", "デッドレター"),
    "jobs_by_status": ("Jobs by status (submitted in the window)", "状態別ジョブ数 (期間内に投入)"),
    "last_hour": ("Last hour", "過去 1 時間"),
    "last_day": ("Last 24 hours", "過去 24 時間"),
    "error_rate": ("Error rate", "エラー率"),
    "error_rate_line": ("runbook line: 5%", "ランブックの基準: 5%"),
    "over_line": ("over the line", "基準超過"),
    "within_line": ("within the line", "基準内"),
    "tokens_month": ("Tokens this month", "今月のトークン"),
    "budget": ("Budget", "予算"),
    "budget_line": ("alert at 80% of the budget", "予算の 80% でアラート"),
    "tenant": ("Tenant", "テナント"),
    "tokens": ("Tokens", "トークン"),
    "percent_used": ("Used", "使用率"),
    "latest_backup": ("Latest backup", "最新のバックアップ"),
    "backup_line": (
        "{chunks} chunks of {docs} documents, {objects} state objects",
        "{docs} ドキュメントの {chunks} チャンク、状態オブジェクト {objects} 個",
    ),
    "latest_report": ("Latest weekly checks", "最新の週次チェック"),
    "none_yet": ("none yet", "まだありません"),
    "refreshes": ("Refreshes every {s} s.", "{s} 秒ごとに更新します。"),
    "recent_jobs": ("Recent jobs", "最近のジョブ"),
    "all_jobs": ("All jobs", "すべてのジョブ"),
    "task": ("Task", "タスク"),
    "created": ("Submitted", "投入日時"),
    "step": ("Step", "ステップ"),
    "error_reason": ("Error reason", "エラー理由"),
    "text_in_task": ("Text in task", "タスク内の文字列"),
    "from": ("From", "開始"),
    "to": ("To", "終了"),
    "any": ("any", "すべて"),
    "filter": ("Filter", "絞り込み"),
    "next_page": ("Next page", "次のページ"),
    "first_page": ("First page", "最初のページ"),
    "no_jobs": ("No jobs match.", "該当するジョブはありません。"),
    "scan_stopped": (
        "Searched {n} jobs back to {when} without filling the page; continue to search older jobs.",
        "{when} までの {n} 件を検索しましたがページが埋まりませんでした。続けて古いジョブを検索できます。",
    ),
    "job": ("Job", "ジョブ"),
    "progress": ("Progress", "進捗"),
    "summary": ("Summary", "要約"),
    "kind": ("Kind", "種類"),
    "duration_ms": ("Duration (ms)", "所要時間 (ms)"),
    "usage_tokens": ("Tokens used", "使用トークン"),
    "report": ("Report", "レポート"),
    "sources": ("Sources", "出典"),
    "open_passage": ("open the passage", "引用箇所を開く"),
    "no_report": ("No report yet.", "レポートはまだありません。"),
    "live": ("Updates live while the job runs.", "ジョブの実行中は自動で更新されます。"),
    "actions": ("Actions", "操作"),
    "cancel": ("Cancel", "キャンセル"),
    "rerun": ("Re-run as a new job", "新しいジョブとして再実行"),
    "resubmit": ("Resubmit the next step", "次のステップを再投入"),
    "cancel_requested": (
        "Cancel requested; honoured at the next step boundary.",
        "キャンセルを要求しました。次のステップ境界で反映されます。",
    ),
    "error": ("Error", "エラー"),
    "dead_letter_note": ("Dead-letter note", "デッドレター記録"),
    "passage": ("Quoted passage", "引用箇所"),
    "back_to_job": ("Back to the job", "ジョブに戻る"),
    "cause": ("Cause", "原因"),
    "description": ("Description", "説明"),
    "message": ("Message", "メッセージ"),
    "deliveries": ("Deliveries", "配信回数"),
    "no_dead_letters": ("The dead-letter queue is empty.", "デッドレターキューは空です。"),
    "sweep_now": ("Sweep now", "今すぐスイープ"),
    "purge": ("Purge all", "すべて削除"),
    "confirm": ("Confirm", "確認"),
    "confirm_go": ("Yes, do it", "実行する"),
    "go_back": ("Go back", "戻る"),
    "confirm_resubmit": (
        "Send step {step} of job {job} again under a new message id, whatever its cause?",
        "原因にかかわらず、ジョブ {job} のステップ {step} を新しいメッセージ ID で再送しますか?",
    ),
    "confirm_sweep": (
        "Run the dead-letter sweep now: transient causes are resubmitted, permanent ones fail their job.",
        "今すぐデッドレタースイープを実行します。一時的な原因は再投入、恒久的な原因はジョブを失敗にします。",
    ),
    "confirm_purge": (
        "Delete all {n} dead-lettered messages? Their jobs are left as they are.",
        "デッドレターの {n} 件すべてを削除しますか?ジョブはそのまま残ります。",
    ),
    "done": ("Done", "完了"),
    "what_was_done": ("What was done", "実行結果"),
    "documents": ("Documents", "ドキュメント"),
    "document": ("Document", "ドキュメント"),
    "title": ("Title", "タイトル"),
    "chunks": ("Chunks", "チャンク数"),
    "upload": ("Upload", "アップロード"),
    "upload_help": (
        "Markdown or text files; drop them here or choose them.",
        "Markdown またはテキストファイル。ここにドロップするか選択してください。",
    ),
    "choose_files": ("Files", "ファイル"),
    "uploaded": ("Indexed: {docs}", "索引に登録しました: {docs}"),
    "search": ("Search", "検索"),
    "search_help": (
        "What the agent would retrieve for this query, with scores.",
        "このクエリでエージェントが取得する内容とスコア。",
    ),
    "query": ("Query", "クエリ"),
    "score": ("Score", "スコア"),
    "snippet": ("Snippet", "抜粋"),
    "no_hits": ("Nothing found.", "見つかりませんでした。"),
    "index_chunks": ("{n} chunks in the index.", "索引には {n} 個のチャンクがあります。"),
    "tokens_per_day": ("Tokens per day (by submission day)", "日別トークン (投入日ごと)"),
    "tokens_per_tenant": ("Tokens per tenant, with budget and 80% line", "テナント別トークン (予算と 80% ライン)"),
    "largest_jobs": ("Largest jobs this month", "今月の大きいジョブ"),
    "day": ("Day", "日付"),
    "month": ("Month", "月"),
    "backups": ("Backups", "バックアップ"),
    "run_backup": ("Back up now", "今すぐバックアップ"),
    "restore": ("Restore", "復元"),
    "documents_n": ("Documents", "ドキュメント数"),
    "objects": ("Objects", "オブジェクト数"),
    "bytes": ("Bytes", "バイト数"),
    "no_backups": ("No backups yet.", "バックアップはまだありません。"),
    "confirm_backup": (
        "Export the knowledge index and the job state to a new backup now?",
        "ナレッジインデックスとジョブの状態を今すぐ新しいバックアップに書き出しますか?",
    ),
    "confirm_restore": (
        "Restore backup {id}: the live knowledge index ({now} chunks) will be replaced by the backup's "
        "{chunks} chunks of {docs} documents. Job records, reports and ledgers that are missing are put "
        "back from its {objects} objects; newer ones are kept.",
        "バックアップ {id} を復元します。現在のナレッジインデックス ({now} チャンク) はバックアップの "
        "{docs} ドキュメント、{chunks} チャンクで置き換えられます。欠けているジョブ記録・レポート・台帳は "
        "{objects} 個のオブジェクトから戻され、新しいものは保持されます。",
    ),
    "weekly_checks": ("Weekly checks", "週次チェック"),
    "run_checks": ("Run the weekly checks now", "今すぐ週次チェックを実行"),
    "confirm_checks": (
        "Run the weekly operations checks now and write a report?",
        "週次の運用チェックを今すぐ実行してレポートを書き出しますか?",
    ),
    "retention": ("Retention", "保持期間"),
    "run_retention": ("Apply retention now", "今すぐ保持期間を適用"),
    "confirm_retention": (
        "Delete all but the last checkpoint of jobs finished more than {days} days ago?",
        "{days} 日より前に終了したジョブの、最後以外のチェックポイントを削除しますか?",
    ),
    "schedules": ("Schedules", "スケジュール"),
    "last_runs": ("Recent timer runs", "最近のタイマー実行"),
    "alerts": ("Alerts", "アラート"),
    "no_alerts": ("none: every runbook threshold is met", "なし: すべての基準を満たしています"),
    "finished": ("Finished", "終了"),
    "not_found": ("Not found", "見つかりません"),
    "forbidden": ("Not allowed", "許可されていません"),
    "failed_action": ("The operation failed", "操作に失敗しました"),
    "fix": ("What to do", "対処"),
    "none": ("none", "なし"),
    "when": ("When", "日時"),
    "task_name": ("Task", "タスク"),
    "counts": ("Counts", "件数"),
    "cost": ("Cost", "費用"),
    "stuck_jobs": ("Stuck jobs", "停滞ジョブ"),
    "stuck_run": (
        "Detector run {when}: {examined} unfinished examined, {stuck} stuck, {repaired} repaired, {failed} failed.",
        "検出 {when}: 未完了 {examined} 件を確認、停滞 {stuck} 件、修復 {repaired} 件、失敗 {failed} 件。",
    ),
    "stuck_show": ("What is stuck now", "現在の停滞ジョブ"),
    "stuck_now": ("Now (read-only scan)", "現在(読み取りのみ)"),
    "stuck_help": (
        "A job is stuck when no message is on its way for its next step and nothing moved for over {s} s.",
        "次のステップのメッセージがなく、{s} 秒を超えて進んでいないジョブが停滞ジョブです。",
    ),
    "examined": ("Examined", "確認"),
    "in_flight": ("on their way", "進行中"),
    "incomplete_view": ("the queue is too long to see every message", "キューが長く、全メッセージを確認できません"),
    "idle_s": ("Idle s", "停止 秒"),
    "state": ("State", "状態"),
    "no_stuck": ("Nothing is stuck.", "停滞ジョブはありません。"),
    "repair_now": ("Repair now", "今すぐ修復"),
    "confirm_stuck": (
        "Re-send the next step of every stuck job now (failing those past STUCK_MAX_REPAIRS), as the timer does?",
        "停滞ジョブすべての次のステップを今すぐ再送しますか(STUCK_MAX_REPAIRS を超えたものは失敗にします)?",
    ),
    "provenance": ("Provenance", "来歴"),
    "model": ("Model", "モデル"),
    "prompt_version": ("Prompt version", "プロンプト版"),
    "chunks_read": ("Chunks read", "読んだチャンク"),
    "queued_ms": ("queued ms", "待機 ms"),
    "documents_read": ("Documents read (versions)", "読んだ文書(版)"),
    "versions": ("Versions", "版"),
    "citation_checks": ("Citation checks", "引用の検証"),
    "scope": ("Scope", "スコープ"),
    "version": ("Version", "版"),
    "earlier_versions": ("Earlier versions", "以前の版"),
    "kind_of_file": ("Kind", "種類"),
    "all_scopes": ("all scopes", "全スコープ"),
    "unpriced": ("no price for this model", "このモデルの価格未設定"),
    "events": ("Events", "イベント"),
    "events_help": (
        "From the job's durable events stream; the page follows it while the job runs.",
        "ジョブの永続イベントストリームから。実行中はページが追従します。",
    ),
    "approval": ("Waiting for approval", "承認待ち"),
    "approval_help": (
        "After step {step} the job waits for a decision on: {pending}. Deadline {deadline}.",
        "ステップ {step} の後、次の判断を待っています: {pending}。期限 {deadline}。",
    ),
    "comment": ("Comment (optional; the agent reads it as data)", "コメント(任意。エージェントはデータとして読みます)"),
    "approve": ("Approve", "承認"),
    "reject": ("Reject", "却下"),
    "approvals": ("Approvals", "承認"),
    "confirm_approve": (
        "Approve job {job} after step {step}?",
        "ジョブ {job} のステップ {step} 後の処理を承認しますか?",
    ),
    "confirm_reject": ("Reject job {job} after step {step}?", "ジョブ {job} のステップ {step} 後の処理を却下しますか?"),
    "parent_job": ("Parent job", "親ジョブ"),
    "sub_jobs": ("Sub-question jobs", "サブ質問ジョブ"),
    "cost_budget": ("Cost budget", "費用予算"),
    "total_cost": ("Total cost", "費用合計"),
    "webhooks": ("Webhook deliveries", "Webhook 配信"),
    "no_webhooks": ("No webhook deliveries.", "Webhook 配信はありません。"),
    "redeliver": ("Redeliver", "再配信"),
    "attempts": ("Attempts", "試行"),
    "event": ("Event", "イベント"),
    "job_schedules": ("Job schedules", "ジョブスケジュール"),
    "no_job_schedules": ("No job schedules.", "ジョブスケジュールはありません。"),
    "next_run": ("Next", "次回"),
    "last_job": ("Last job", "最後のジョブ"),
    "pause": ("Pause", "一時停止"),
    "resume": ("Resume", "再開"),
    "delete": ("Delete", "削除"),
    "paused": ("paused", "停止中"),
    "confirm_pause": (
        "Pause schedule {id} ({cron})? It submits nothing until resumed.",
        "スケジュール {id}({cron})を一時停止しますか? 再開まで投入しません。",
    ),
    "confirm_resume": (
        "Resume schedule {id} ({cron})? It fires from its next occurrence.",
        "スケジュール {id}({cron})を再開しますか? 次回の時刻から実行します。",
    ),
    "confirm_delete": (
        "Delete schedule {id} ({cron}) of tenant {tenant}? This cannot be undone.",
        "テナント {tenant} のスケジュール {id}({cron})を削除しますか? 元に戻せません。",
    ),
    "confirm_redeliver": (
        "Send {event} of job {job} to {url} again?",
        "ジョブ {job} の {event} を {url} へ再送しますか?",
    ),
}


def negotiate(accept_language: str | None, chosen: str | None) -> str:
    """The switch's choice when valid, else the first supported language in Accept-Language, else English."""
    if chosen in LANGUAGES:
        return str(chosen)
    ranked: list[tuple[float, int, str]] = []
    for n, part in enumerate((accept_language or "").split(",")):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        ranked.append((-q, n, tag.strip().lower().split("-")[0]))
    for _, _, lang in sorted(ranked):
        if lang in LANGUAGES:
            return lang
    return "en"


def translator(lang: str) -> Callable[..., str]:
    """t(id, **values): the message in `lang`, with values filled in."""
    index = LANGUAGES.index(lang) if lang in LANGUAGES else 0

    def t(key: str, **values: object) -> str:
        pair = MESSAGES.get(key)
        text = (pair[index] or pair[0]) if pair else key
        return text.format(**values) if values else text

    return t
