"""The REST API under ``/api`` (Bearer tokens; no cookies, so no CSRF) and its OpenAPI spec."""

from __future__ import annotations

import functools
from typing import Any, Callable

from flask import Blueprint, abort, g, jsonify, request

from liverseg import __version__
from liverseg.errors import InputError, ResourceError
from liverseg.web.store import Study
from liverseg.web.views import (
    OUTPUT_FILES,
    create_study,
    ctx,
    delete_study_files,
    send_output,
    study_json,
    upload_error_status,
)

__all__ = ["bp", "openapi_spec"]

bp = Blueprint("api", __name__, url_prefix="/api")


def token_required(view: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        user = ctx().store.user_by_token(token.strip()) if scheme.lower() == "bearer" and token.strip() else None
        if user is None:
            resp = jsonify(error="authentication required: send 'Authorization: Bearer <token>' "
                                 "(create a token with `liverseg users token NAME` or on the Account page)")
            resp.status_code = 401
            resp.headers["WWW-Authenticate"] = 'Bearer realm="liverseg"'
            return resp
        g.user = user
        return view(*args, **kwargs)

    return wrapped


def _own(study_id: str) -> Study:
    study = ctx().store.study(study_id, user_id=g.user.id) if study_id.isalnum() else None
    if study is None:
        abort(404)
    return study


@bp.route("/studies", methods=["POST"])
@token_required
def create() -> Any:
    try:
        study = create_study(g.user, request.files.getlist("files"), request.form.get("note", ""),
                             request.form.get("pixel_size_mm"))
    except (InputError, ResourceError) as exc:
        return jsonify(error=str(exc)), upload_error_status(exc)
    resp = jsonify(id=study.id, status="queued")
    resp.status_code = 202
    resp.headers["Location"] = f"/api/studies/{study.id}"
    return resp


@bp.route("/studies", methods=["GET"])
@token_required
def list_studies() -> Any:
    q = request.args.get("q", "").strip()[:200]
    return jsonify(studies=[study_json(s) for s in ctx().store.studies(user_id=g.user.id, search=q)])


@bp.route("/studies/<study_id>", methods=["GET"])
@token_required
def get_study(study_id: str) -> Any:
    return jsonify(study_json(_own(study_id), with_report=True))


@bp.route("/studies/<study_id>", methods=["DELETE"])
@token_required
def delete_study(study_id: str) -> Any:
    study = _own(study_id)
    delete_study_files(study.id)
    return jsonify(id=study.id, deleted=True)


@bp.route("/studies/<study_id>/files/<name>", methods=["GET"])
@token_required
def get_file(study_id: str, name: str) -> Any:
    return send_output(_own(study_id), name)


@bp.route("/openapi.json", methods=["GET"])
def openapi() -> Any:
    return jsonify(openapi_spec())


def openapi_spec() -> dict[str, Any]:
    """The OpenAPI 3.0 description of this API."""
    err = {"description": "", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}

    def e(text: str) -> dict[str, Any]:
        return {**err, "description": text}

    study_id = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    spec: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {
            "title": "liverseg API",
            "version": __version__,
            "description": "Upload abdominal CT, get liver and liver-tumor segmentations and measurements. "
                           "Research software, not for diagnostic use.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "`liverseg users token NAME` prints a token"}},
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]},
                "Summary": {"type": "object", "properties": {
                    "liver_volume_ml": {"type": "number", "nullable": True,
                                        "description": "liver volume in mL, tumor included"},
                    "lesion_count": {"type": "integer", "nullable": True},
                    "tumor_volume_ml": {"type": "number", "nullable": True},
                    "tumor_burden_pct": {"type": "number", "nullable": True,
                                         "description": "tumor volume / liver volume x 100"},
                }},
                "Study": {"type": "object", "properties": {
                    "id": {"type": "string"},
                    "created_at": {"type": "string", "format": "date-time"},
                    "note": {"type": "string"},
                    "input_name": {"type": "string"},
                    "input_format": {"type": "string"},
                    "n_files": {"type": "integer"},
                    "status": {"type": "string", "enum": ["queued", "running", "done", "failed"]},
                    "stage": {"type": "string"},
                    "progress": {"type": "number", "minimum": 0, "maximum": 1},
                    "error": {"type": "string", "nullable": True, "description": "why the job failed"},
                    "attempts": {"type": "integer"},
                    "started_at": {"type": "string", "nullable": True},
                    "finished_at": {"type": "string", "nullable": True},
                    "summary": {"$ref": "#/components/schemas/Summary"},
                    "files": {"type": "array", "items": {"type": "string"},
                              "description": "outputs of the newest mask version available for download (status "
                                             "done): " + ", ".join(OUTPUT_FILES) + ", meshes.json, mesh-liver.ply, "
                                             "mesh-lesion-<k>.ply (report.pdf is listed before it exists: it is "
                                             "drawn on its first download)"},
                    "report": {"type": "object", "description": "report.json of the newest mask version "
                                                                "(GET /api/studies/{id}, status done)"},
                    "mask_version": {"type": "integer", "description": "the newest mask version (1: the model's)"},
                    "versions": {"type": "array", "items": {"$ref": "#/components/schemas/MaskVersion"}},
                }},
                "MaskVersion": {"type": "object", "properties": {
                    "version": {"type": "integer"},
                    "kind": {"type": "string", "enum": ["model", "correction"]},
                    "created_at": {"type": "string", "nullable": True},
                    "edited_by": {"type": "string", "nullable": True},
                    "based_on": {"type": "integer", "nullable": True},
                    "changed_voxels": {"type": "integer", "nullable": True},
                    "source": {"type": "string", "nullable": True, "description": "viewer or api"},
                    "note": {"type": "string"},
                    "files": {"type": "array", "items": {"type": "string"}},
                }},
            },
        },
        "paths": {
            "/api/studies": {
                "post": {
                    "summary": "Upload a scan; a job is queued",
                    "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                        "type": "object",
                        "properties": {
                            "files": {"type": "array", "items": {"type": "string", "format": "binary"},
                                      "description": "one NIfTI/MHA/NRRD file, a DICOM series (many files) or a "
                                                     ".zip of it, or one DICOM/PNG/JPEG slice"},
                            "note": {"type": "string"},
                            "pixel_size_mm": {"type": "number", "minimum": 0, "maximum": 50,
                                              "description": "optional pixel size (mm) of a PNG/JPEG slice, which "
                                                             "carries none: areas then in mm² instead of pixels"},
                        },
                        "required": ["files"],
                    }}}},
                    "responses": {
                        "202": {"description": "accepted", "content": {"application/json": {"schema": {
                            "type": "object", "properties": {"id": {"type": "string"},
                                                             "status": {"type": "string", "enum": ["queued"]}}}}}},
                        "400": e("the content is refused (unknown format, unsafe zip, no DICOM files)"),
                        "401": e("no or unknown token"),
                        "413": e("too large, too many files, or images that would decode to far more than the upload"),
                        "507": e("the server's disk is full"),
                    },
                },
                "get": {
                    "summary": "The caller's studies, newest first",
                    "parameters": [{"name": "q", "in": "query", "required": False, "schema": {"type": "string"},
                                    "description": "search in note, file name, id, status"}],
                    "responses": {
                        "200": {"description": "", "content": {"application/json": {"schema": {
                            "type": "object", "properties": {"studies": {
                                "type": "array", "items": {"$ref": "#/components/schemas/Study"}}}}}}},
                        "401": e("no or unknown token"),
                    },
                },
            },
            "/api/studies/{id}": {
                "get": {
                    "summary": "Status, progress, stage, error, and the report when done",
                    "parameters": [study_id],
                    "responses": {
                        "200": {"description": "", "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/Study"}}}},
                        "401": e("no or unknown token"),
                        "404": e("no such study for this user"),
                    },
                },
                "delete": {
                    "summary": "Delete the study and its files",
                    "parameters": [study_id],
                    "responses": {"200": {"description": "deleted"}, "401": e("no or unknown token"),
                                  "404": e("no such study for this user")},
                },
            },
            "/api/studies/{id}/files/{name}": {
                "get": {
                    "summary": "Download one output",
                    "parameters": [study_id, {"name": "name", "in": "path", "required": True,
                                              "schema": {"type": "string"},
                                              "description": ", ".join(OUTPUT_FILES) + ", meshes.json, "
                                                             "mesh-liver.ply, mesh-lesion-<k>.ply"},
                                   {"name": "version", "in": "query", "required": False,
                                    "schema": {"type": "integer"}, "description": "a mask version (default: newest)"}],
                    "responses": {"200": {"description": "the file (report.pdf: drawn on its first download, "
                                                         "a few seconds)"},
                                  "401": e("no or unknown token"),
                                  "404": e("no such study, not done yet, or no such output"),
                                  "500": e("report.pdf could not be drawn (the reason; report.html has the same "
                                           "content)"),
                                  "507": e("report.pdf could not be drawn: the server's disk is full")},
                },
            },
            "/api/studies/{id}/mask": {
                "put": {
                    "summary": "Store a corrected mask as a new version; every output is re-measured from it",
                    "parameters": [study_id,
                                   {"name": "based_on", "in": "query", "required": False, "schema": {"type": "integer"}},
                                   {"name": "note", "in": "query", "required": False, "schema": {"type": "string"}}],
                    "requestBody": {"required": True, "content": {
                        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                        "multipart/form-data": {"schema": {"type": "object", "properties": {
                            "file": {"type": "string", "format": "binary"}}}}},
                        "description": "a NIfTI (.nii or .nii.gz) on the study's grid, labels 0/1/2"},
                    "responses": {
                        "201": {"description": "the study with the new `version`", "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/Study"}}}},
                        "400": e("not a NIfTI, another grid (shape, voxel size, origin, direction) or other labels"),
                        "401": e("no or unknown token"), "404": e("no such study for this user"),
                        "409": e("the study's analysis has not finished"), "507": e("the server's disk is full"),
                    },
                },
            },
            "/api/studies/{id}/versions": {
                "get": {"summary": "The study's mask versions", "parameters": [study_id],
                        "responses": {"200": {"description": "{versions: [MaskVersion]}"},
                                      "401": e("no or unknown token"), "404": e("no such study for this user")}},
            },
            "/api/studies/{id}/versions/{n}/files/{name}": {
                "get": {"summary": "Download one output of mask version n",
                        "parameters": [study_id, {"name": "n", "in": "path", "required": True,
                                                  "schema": {"type": "integer"}},
                                       {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
                        "responses": {"200": {"description": "the file"}, "401": e("no or unknown token"),
                                      "404": e("no such study, version or output")}},
            },
            "/api/openapi.json": {"get": {"summary": "This document", "security": [],
                                          "responses": {"200": {"description": ""}}}},
        },
    }
    from liverseg.web.compare import openapi_paths  # the follow-up comparisons document their own routes

    spec["paths"].update(openapi_paths())
    return spec
